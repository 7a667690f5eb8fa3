"""Lookup tables for ``transforms.standard_attributes``: countries and Braze's languages.

A data table, so exempt from the ~400-line rule for modules (docs/architecture.md, "Layout"):
data only, embedded so no new dependency is needed. Each line of a table is
``CODE|name|other spelling|...``; names are matched after ``normalise_name`` (case, accents,
punctuation and a leading "the" do not matter), and a spelling that would lead to two codes
fails the import (``tests/test_standard_attributes.py`` imports it).

Countries: ISO 3166-1, 249 entries: alpha-2 (what Braze takes, docs/api-facts.md, B8),
then alpha-3, then the English short name and the spellings geo-IP databases and Amplitude
use ("United States", "United Kingdom", "South Korea", "Czechia", ...). Left out on purpose,
because they name no one country: bare "Korea", "America", "Gaelic", "Kosovo" (``XK`` is not
an ISO code).

Languages: Braze's own list (braze-docs ``_docs/_user_guide/data/user_data_collection/
language_codes.md``: mostly ISO 639-1, plus ``fil``, ``haw``, ``gsw`` and others, and ``nb``
for Norwegian), each with Braze's name for it and the English names Amplitude stores (its
HTTP API rewrites a language tag such as ``en-US`` to a name such as ``English``;
docs/api-facts.md, A1).
"""
from __future__ import annotations

import unicodedata
from typing import Dict, FrozenSet, Tuple

__all__ = ["COUNTRY_CODES", "COUNTRY_BY_NAME", "LANGUAGE_CODES", "LANGUAGE_BY_NAME", "LEGACY_LANGUAGE_CODES",
           "normalise_name"]

_COUNTRIES = """
AD|AND|Andorra
AE|ARE|United Arab Emirates|UAE
AF|AFG|Afghanistan
AG|ATG|Antigua and Barbuda
AI|AIA|Anguilla
AL|ALB|Albania
AM|ARM|Armenia
AO|AGO|Angola
AQ|ATA|Antarctica
AR|ARG|Argentina
AS|ASM|American Samoa
AT|AUT|Austria
AU|AUS|Australia
AW|ABW|Aruba
AX|ALA|Åland Islands|Åland
AZ|AZE|Azerbaijan
BA|BIH|Bosnia and Herzegovina|Bosnia
BB|BRB|Barbados
BD|BGD|Bangladesh
BE|BEL|Belgium
BF|BFA|Burkina Faso
BG|BGR|Bulgaria
BH|BHR|Bahrain
BI|BDI|Burundi
BJ|BEN|Benin
BL|BLM|Saint Barthélemy|St Barts
BM|BMU|Bermuda
BN|BRN|Brunei|Brunei Darussalam
BO|BOL|Bolivia|Plurinational State of Bolivia|Bolivia, Plurinational State of
BQ|BES|Bonaire, Sint Eustatius and Saba|Caribbean Netherlands|Bonaire
BR|BRA|Brazil|Brasil
BS|BHS|Bahamas
BT|BTN|Bhutan
BV|BVT|Bouvet Island
BW|BWA|Botswana
BY|BLR|Belarus
BZ|BLZ|Belize
CA|CAN|Canada
CC|CCK|Cocos (Keeling) Islands|Cocos Islands
CD|COD|Democratic Republic of the Congo|DR Congo|Congo, Democratic Republic of the|Congo, The Democratic Republic of the|Congo (Kinshasa)|DRC
CF|CAF|Central African Republic
CG|COG|Congo|Republic of the Congo|Congo Republic|Congo (Brazzaville)
CH|CHE|Switzerland
CI|CIV|Côte d'Ivoire|Ivory Coast
CK|COK|Cook Islands
CL|CHL|Chile
CM|CMR|Cameroon
CN|CHN|China|People's Republic of China|PRC
CO|COL|Colombia
CR|CRI|Costa Rica
CU|CUB|Cuba
CV|CPV|Cabo Verde|Cape Verde
CW|CUW|Curaçao
CX|CXR|Christmas Island
CY|CYP|Cyprus
CZ|CZE|Czechia|Czech Republic
DE|DEU|Germany|Deutschland
DJ|DJI|Djibouti
DK|DNK|Denmark
DM|DMA|Dominica
DO|DOM|Dominican Republic
DZ|DZA|Algeria
EC|ECU|Ecuador
EE|EST|Estonia
EG|EGY|Egypt
EH|ESH|Western Sahara
ER|ERI|Eritrea
ES|ESP|Spain|España
ET|ETH|Ethiopia
FI|FIN|Finland
FJ|FJI|Fiji
FK|FLK|Falkland Islands|Falkland Islands (Malvinas)
FM|FSM|Micronesia|Federated States of Micronesia|Micronesia, Federated States of
FO|FRO|Faroe Islands
FR|FRA|France
GA|GAB|Gabon
GB|GBR|United Kingdom|UK|Great Britain|Britain|England|Scotland|Wales|Northern Ireland|United Kingdom of Great Britain and Northern Ireland
GD|GRD|Grenada
GE|GEO|Georgia
GF|GUF|French Guiana
GG|GGY|Guernsey
GH|GHA|Ghana
GI|GIB|Gibraltar
GL|GRL|Greenland
GM|GMB|Gambia
GN|GIN|Guinea
GP|GLP|Guadeloupe
GQ|GNQ|Equatorial Guinea
GR|GRC|Greece
GS|SGS|South Georgia and the South Sandwich Islands
GT|GTM|Guatemala
GU|GUM|Guam
GW|GNB|Guinea-Bissau
GY|GUY|Guyana
HK|HKG|Hong Kong|Hong Kong SAR|Hong Kong SAR China
HM|HMD|Heard Island and McDonald Islands
HN|HND|Honduras
HR|HRV|Croatia
HT|HTI|Haiti
HU|HUN|Hungary
ID|IDN|Indonesia
IE|IRL|Ireland|Republic of Ireland
IL|ISR|Israel
IM|IMN|Isle of Man
IN|IND|India
IO|IOT|British Indian Ocean Territory
IQ|IRQ|Iraq
IR|IRN|Iran|Islamic Republic of Iran|Iran, Islamic Republic of
IS|ISL|Iceland
IT|ITA|Italy|Italia
JE|JEY|Jersey
JM|JAM|Jamaica
JO|JOR|Jordan
JP|JPN|Japan
KE|KEN|Kenya
KG|KGZ|Kyrgyzstan|Kyrgyz Republic
KH|KHM|Cambodia
KI|KIR|Kiribati
KM|COM|Comoros
KN|KNA|Saint Kitts and Nevis
KP|PRK|North Korea|Democratic People's Republic of Korea|Korea, Democratic People's Republic of|DPRK
KR|KOR|South Korea|Republic of Korea|Korea, Republic of
KW|KWT|Kuwait
KY|CYM|Cayman Islands
KZ|KAZ|Kazakhstan
LA|LAO|Laos|Lao People's Democratic Republic|Lao PDR
LB|LBN|Lebanon
LC|LCA|Saint Lucia
LI|LIE|Liechtenstein
LK|LKA|Sri Lanka
LR|LBR|Liberia
LS|LSO|Lesotho
LT|LTU|Lithuania
LU|LUX|Luxembourg
LV|LVA|Latvia
LY|LBY|Libya
MA|MAR|Morocco
MC|MCO|Monaco
MD|MDA|Moldova|Republic of Moldova|Moldova, Republic of
ME|MNE|Montenegro
MF|MAF|Saint Martin|Saint Martin (French part)
MG|MDG|Madagascar
MH|MHL|Marshall Islands
MK|MKD|North Macedonia|Macedonia|Republic of North Macedonia
ML|MLI|Mali
MM|MMR|Myanmar|Burma|Myanmar (Burma)
MN|MNG|Mongolia
MO|MAC|Macao|Macau|Macao SAR China
MP|MNP|Northern Mariana Islands
MQ|MTQ|Martinique
MR|MRT|Mauritania
MS|MSR|Montserrat
MT|MLT|Malta
MU|MUS|Mauritius
MV|MDV|Maldives
MW|MWI|Malawi
MX|MEX|Mexico
MY|MYS|Malaysia
MZ|MOZ|Mozambique
NA|NAM|Namibia
NC|NCL|New Caledonia
NE|NER|Niger
NF|NFK|Norfolk Island
NG|NGA|Nigeria
NI|NIC|Nicaragua
NL|NLD|Netherlands|Holland|Kingdom of the Netherlands
NO|NOR|Norway
NP|NPL|Nepal
NR|NRU|Nauru
NU|NIU|Niue
NZ|NZL|New Zealand
OM|OMN|Oman
PA|PAN|Panama
PE|PER|Peru
PF|PYF|French Polynesia
PG|PNG|Papua New Guinea
PH|PHL|Philippines
PK|PAK|Pakistan
PL|POL|Poland
PM|SPM|Saint Pierre and Miquelon
PN|PCN|Pitcairn|Pitcairn Islands
PR|PRI|Puerto Rico
PS|PSE|Palestine|State of Palestine|Palestine, State of|Palestinian Territories|Palestinian Territory
PT|PRT|Portugal
PW|PLW|Palau
PY|PRY|Paraguay
QA|QAT|Qatar
RE|REU|Réunion
RO|ROU|Romania
RS|SRB|Serbia
RU|RUS|Russia|Russian Federation
RW|RWA|Rwanda
SA|SAU|Saudi Arabia
SB|SLB|Solomon Islands
SC|SYC|Seychelles
SD|SDN|Sudan
SE|SWE|Sweden
SG|SGP|Singapore
SH|SHN|Saint Helena|Saint Helena, Ascension and Tristan da Cunha
SI|SVN|Slovenia
SJ|SJM|Svalbard and Jan Mayen
SK|SVK|Slovakia|Slovak Republic
SL|SLE|Sierra Leone
SM|SMR|San Marino
SN|SEN|Senegal
SO|SOM|Somalia
SR|SUR|Suriname
SS|SSD|South Sudan
ST|STP|São Tomé and Príncipe
SV|SLV|El Salvador
SX|SXM|Sint Maarten|Sint Maarten (Dutch part)
SY|SYR|Syria|Syrian Arab Republic
SZ|SWZ|Eswatini|Swaziland
TC|TCA|Turks and Caicos Islands
TD|TCD|Chad
TF|ATF|French Southern Territories
TG|TGO|Togo
TH|THA|Thailand
TJ|TJK|Tajikistan
TK|TKL|Tokelau
TL|TLS|Timor-Leste|East Timor
TM|TKM|Turkmenistan
TN|TUN|Tunisia
TO|TON|Tonga
TR|TUR|Türkiye|Turkey
TT|TTO|Trinidad and Tobago
TV|TUV|Tuvalu
TW|TWN|Taiwan|Taiwan, Province of China
TZ|TZA|Tanzania|United Republic of Tanzania|Tanzania, United Republic of
UA|UKR|Ukraine
UG|UGA|Uganda
UM|UMI|United States Minor Outlying Islands|U.S. Outlying Islands
US|USA|United States|United States of America|U.S.|U.S.A.
UY|URY|Uruguay
UZ|UZB|Uzbekistan
VA|VAT|Vatican City|Holy See|Vatican
VC|VCT|Saint Vincent and the Grenadines|Saint Vincent and Grenadines
VE|VEN|Venezuela|Bolivarian Republic of Venezuela|Venezuela, Bolivarian Republic of
VG|VGB|British Virgin Islands|Virgin Islands, British
VI|VIR|U.S. Virgin Islands|US Virgin Islands|United States Virgin Islands|Virgin Islands, U.S.
VN|VNM|Vietnam|Viet Nam
VU|VUT|Vanuatu
WF|WLF|Wallis and Futuna
WS|WSM|Samoa
YE|YEM|Yemen
YT|MYT|Mayotte
ZA|ZAF|South Africa
ZM|ZMB|Zambia
ZW|ZWE|Zimbabwe
"""

# Braze's language list, in Braze's order, then other English names for the same language.
_LANGUAGES = """
en|English
fr|French
de|German
it|Italian
nl|Dutch|Flemish
sv|Swedish
es|Spanish|Castilian
da|Danish
pt|Portuguese
nb|Norwegian|Norwegian Bokmål|Bokmål
he|Hebrew
ja|Japanese
ar|Arabic
fi|Finnish
el|Greek|Modern Greek
is|Icelandic
mt|Maltese
tr|Turkish
hr|Croatian
zh|Chinese|Simplified Chinese|Traditional Chinese
ur|Urdu
hi|Hindi
th|Thai
ko|Korean
lt|Lithuanian
pl|Polish
hu|Hungarian
et|Estonian
lv|Latvian
se|Sami|Northern Sami
saq|Samburu
fo|Faroese
fa|Farsi|Persian
ru|Russian
ga|Irish
sq|Albanian
ro|Romanian
cs|Czech
sk|Slovak
sl|Slovenian|Slovene
yi|Yiddish
sr|Serbian
mk|Macedonian
dua|Douala|Duala
bg|Bulgarian
uk|Ukrainian
be|Belarusian
dav|Dawida|Taita
uz|Uzbek
kk|Kazakh
az|Azerbaijani|Azeri
hy|Armenian
ka|Georgian
mo|Moldavian|Moldovan
ky|Kirghiz|Kyrgyz
tg|Tajiki|Tajik
tk|Turkmen
mn|Mongolian
ps|Pashto|Pushto
ku|Kurdish
ks|Kashmiri
sd|Sindhi
bo|Tibetan
ne|Nepali
sa|Sanskrit
mr|Marathi
bn|Bengali|Bangla
as|Assamese
gu|Gujarati
pa|Punjabi|Panjabi
or|Oriya|Odia
ml|Malayalam
kn|Kannada
ta|Tamil
te|Telugu
si|Sinhalese|Sinhala
my|Burmese
lo|Lao
vi|Vietnamese
id|Indonesian
tl|Tagalog
ms|Malay
am|Amharic
ti|Tigrinya
om|Oromo
so|Somali
sw|Swahili
rw|Kinyarwanda
rn|Rundi|Kirundi
mg|Malagasy
eo|Esperanto
cy|Welsh
eu|Basque
ca|Catalan
la|Latin
qu|Quechua
gn|Guarani
ay|Aymara
tt|Tatar
ug|Uighur|Uyghur
dz|Dzongkha
jv|Javanese
su|Sundanese
gl|Galician
af|Afrikaans
br|Breton
iu|Inuktitut
gd|Scottish|Scottish Gaelic
gv|Manx
to|Tongan
kl|Greenlandic|Kalaallisut
nn|Nynorsk|Norwegian Nynorsk
ak|Akan
agq|Aghem
asa|Asu
bas|Basa|Basaa
bem|Bemba
bez|Bena
bm|Bambara
brx|Bodo
bs|Bosnian
cgg|Chiga
chr|Cherokee
dje|Zarma
dyo|Jola_Fonyi
ebu|Kiembu|Embu
ee|Ewe
ewo|Ewondo
ff|Peul|Fulah|Fula
fil|Filipino
gsw|German Swiss|Swiss German
guz|Ekugusii|Gusii
ha|Hausa
haw|Hawaiian
ig|Igbo
ii|Sichuan Yi
jmc|Machame
kab|Kabyle
kam|Kamba
kde|Makonde
kea|Criol|Kabuverdianu
khq|Songhay|Koyra Chiini
ki|Kikuyu
kln|Kalenjin
km|Cambodian|Khmer
kok|Konkani
ksb|Shambala
ksf|Bafia
kw|Cornish
lb|Luxembourgish
lg|Ganda
ln|Lingala
lu|Luba Katanga
luo|Luo
luy|Luyia
mas|Masai
mer|Meru
mfe|Morisyen
mgh|Makhuwa Meetto
mua|Mundang
naq|Nama
nd|North Ndebele
rm|Raeto Romance|Romansh
rof|Rombo
rwk|Rwa
sbp|Sangu
seh|Sena
ses|Koyraboro Senni
shi|Tachelhit
sn|Shona
swc|Congo Swahili
teo|Teso
twq|Tasawaq
tzm|Central Atlas Tamazight
vai|Vai
vun|Vunjo
xh|Xhosa
xog|Soga
yav|Yangben
yo|Yoruba
zu|Zulu
nyn|Nyankole
nus|Nuer
"""

# Withdrawn or macrolanguage codes that name one of Braze's languages without doubt.
LEGACY_LANGUAGE_CODES: Dict[str, str] = {"iw": "he", "in": "id", "ji": "yi", "jw": "jv", "no": "nb"}


def normalise_name(text: str) -> str:
    """A country or language name reduced to what tells names apart: no accents, case,
    punctuation or leading "the"; "&" is "and" and "St" is "Saint"."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().replace("&", " and ")
    words = "".join(c if c.isalnum() else " " for c in plain).split()
    if words and words[0] == "the":
        words = words[1:]
    return " ".join("saint" if w == "st" else w for w in words)


def _table(text: str, code_fields: int) -> Tuple[FrozenSet[str], Dict[str, str]]:
    codes, by_name = set(), {}
    for line in text.strip().splitlines():
        fields = line.split("|")
        code = fields[0]
        codes.add(code)
        for position, spelling in enumerate(fields[1:], 1):
            key = spelling.casefold() if position < code_fields else normalise_name(spelling)
            if by_name.setdefault(key, code) != code:
                raise ValueError(f"{spelling!r} names both {by_name[key]} and {code}")
    return frozenset(codes), by_name


COUNTRY_CODES, COUNTRY_BY_NAME = _table(_COUNTRIES, 2)  # alpha-3 codes are in COUNTRY_BY_NAME too
LANGUAGE_CODES, LANGUAGE_BY_NAME = _table(_LANGUAGES, 1)
