"""Names of the files in every run directory (DESIGN.md's contract), in one place.

Kept free of torch and Lightning so that the report can import it cheaply.
"""

GRAD_NORMS_FILE = "grad_norms.csv"
GRADIENT_FLOW_FILE = "gradient_flow.png"
