//! JSON Schemas of the manifest documents, generated from `types` (see `crds-schema/`).
