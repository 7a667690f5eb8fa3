"""amplitude-braze: Amplitude events, user properties and cohorts into Braze, as Beam jobs."""
import setuptools

BEAM = "apache-beam[gcp]>=2.77.0,<2.78"  # must match templates/Dockerfile

setuptools.setup(
    name="amplitude-braze",
    version="0.1.0",
    description="Stream Amplitude events and user properties to Braze with Apache Beam.",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*", "local", "local.*"]),
    package_data={"pipeline": ["*.json"]},
    install_requires=[
        BEAM,
        "google-cloud-pubsub>=2.20,<3",
        "google-cloud-secret-manager>=2.20,<3",
        "requests>=2.31,<3",
        "orjson>=3.9,<4",
        "PyYAML>=6,<7",
        # IANA time zones for the time_zone attribute (transforms/standard_attributes.py) where
        # the system has no /usr/share/zoneinfo. Pure data in a fixed format: no upper bound,
        # as every release is the same files with newer zone rules.
        "tzdata>=2024.1",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-timeout>=2.3,<3", "jsonschema>=4.20,<5", "aiosmtpd>=1.4,<2",
                 "hypothesis>=6.100,<7"],
        "bench": ["pyinstrument>=4.6,<6", "matplotlib>=3.8,<4"],
    },
)
