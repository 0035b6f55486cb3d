"""Optional engines behind the same pipeline API (`pipeline(..., backend=...)`); "torch", lightpipe's
own model code, is the default and the reference the others are tested against."""

BACKENDS = ("torch", "ctranslate2")
