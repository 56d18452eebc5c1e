"""The job file: its schema (frozen pydantic models), the YAML reader with line marks and
``--set``, the wording of its errors, the prompt templates, and the model catalogue the request
is checked and priced against. Reads no input data and sends nothing."""
