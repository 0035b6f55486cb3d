"""Which model types lightpipe builds: Hub `model_type` → the module in lightpipe.models whose
FAMILIES record builds it. Its own torch-free file, so `lightpipe models` (hub_search) can say
what loads without importing torch; loading.py imports the modules named here when it builds one."""

FAMILIES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "distilbert": "distilbert",
    "mpnet": "mpnet",
    "electra": "electra",
    "modernbert": "modernbert",
    "deberta-v2": "deberta_v2",
    "albert": "albert",
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3_text",
    "phi3": "phi3",
    "bart": "bart",
    "mbart": "bart",
    "t5": "t5",
    "marian": "marian",
    "m2m_100": "m2m_100",
    "pegasus": "pegasus",
    "mt5": "mt5",
}
