"""The job file: its schema (frozen pydantic models), the YAML reader with line marks and
``--set``, the wording of its errors, and the prompt templates. Reads no input data and
sends nothing."""
