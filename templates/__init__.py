"""The Dataflow flex template: metadata, image, per-environment parameters and the gcloud commands."""
