"""Language codes of the multilingual translation tokenizers, and where the source language's
code goes around a text.

NLLB-200 (NllbTokenizer): the codes (eng_Latn, fra_Latn, ...) are special tokens of the
vocabulary; the source language opens the text, `eng_Latn ... </s>`, or with the tokenizer's
`legacy_behaviour` follows its eos, `... </s> eng_Latn`. The target language is forced as the
first generated token.
M2M100 (M2M100Tokenizer): the codes (en, fr, ...) stand for tokens `__en__`, `__fr__`, whose ids
follow vocab.json's in the order below; `__en__ ... </s>`.

The lists are transformers' FAIRSEQ_LANGUAGE_CODES: the tokenizers fall back on them when a
repository's files don't list the codes, and M2M100's ids depend on their order.
"""

from __future__ import annotations

NLLB_CODES = """
ace_Arab ace_Latn acm_Arab acq_Arab aeb_Arab afr_Latn ajp_Arab aka_Latn amh_Ethi apc_Arab
arb_Arab ars_Arab ary_Arab arz_Arab asm_Beng ast_Latn awa_Deva ayr_Latn azb_Arab azj_Latn
bak_Cyrl bam_Latn ban_Latn bel_Cyrl bem_Latn ben_Beng bho_Deva bjn_Arab bjn_Latn bod_Tibt
bos_Latn bug_Latn bul_Cyrl cat_Latn ceb_Latn ces_Latn cjk_Latn ckb_Arab crh_Latn cym_Latn
dan_Latn deu_Latn dik_Latn dyu_Latn dzo_Tibt ell_Grek eng_Latn epo_Latn est_Latn eus_Latn
ewe_Latn fao_Latn pes_Arab fij_Latn fin_Latn fon_Latn fra_Latn fur_Latn fuv_Latn gla_Latn
gle_Latn glg_Latn grn_Latn guj_Gujr hat_Latn hau_Latn heb_Hebr hin_Deva hne_Deva hrv_Latn
hun_Latn hye_Armn ibo_Latn ilo_Latn ind_Latn isl_Latn ita_Latn jav_Latn jpn_Jpan kab_Latn
kac_Latn kam_Latn kan_Knda kas_Arab kas_Deva kat_Geor knc_Arab knc_Latn kaz_Cyrl kbp_Latn
kea_Latn khm_Khmr kik_Latn kin_Latn kir_Cyrl kmb_Latn kon_Latn kor_Hang kmr_Latn lao_Laoo
lvs_Latn lij_Latn lim_Latn lin_Latn lit_Latn lmo_Latn ltg_Latn ltz_Latn lua_Latn lug_Latn
luo_Latn lus_Latn mag_Deva mai_Deva mal_Mlym mar_Deva min_Latn mkd_Cyrl plt_Latn mlt_Latn
mni_Beng khk_Cyrl mos_Latn mri_Latn zsm_Latn mya_Mymr nld_Latn nno_Latn nob_Latn npi_Deva
nso_Latn nus_Latn nya_Latn oci_Latn gaz_Latn ory_Orya pag_Latn pan_Guru pap_Latn pol_Latn
por_Latn prs_Arab pbt_Arab quy_Latn ron_Latn run_Latn rus_Cyrl sag_Latn san_Deva sat_Beng
scn_Latn shn_Mymr sin_Sinh slk_Latn slv_Latn smo_Latn sna_Latn snd_Arab som_Latn sot_Latn
spa_Latn als_Latn srd_Latn srp_Cyrl ssw_Latn sun_Latn swe_Latn swh_Latn szl_Latn tam_Taml
tat_Cyrl tel_Telu tgk_Cyrl tgl_Latn tha_Thai tir_Ethi taq_Latn taq_Tfng tpi_Latn tsn_Latn
tso_Latn tuk_Latn tum_Latn tur_Latn twi_Latn tzm_Tfng uig_Arab ukr_Cyrl umb_Latn urd_Arab
uzn_Latn vec_Latn vie_Latn war_Latn wol_Latn xho_Latn ydd_Hebr yor_Latn yue_Hant zho_Hans
zho_Hant zul_Latn
""".split()

M2M100 = """
af am ar ast az ba be bg bn br bs ca ceb cs cy da de el en es et fa ff fi fr fy ga gd gl gu ha
he hi hr ht hu hy id ig ilo is it ja jv ka kk km kn ko lb lg ln lo lt lv mg mk ml mn mr ms my ne
nl no ns oc or pa pl ps pt ro ru sd si sk sl so sq sr ss su sv sw ta th tl tn tr uk ur uz vi wo
xh yi yo zh zu
""".split()

M2M100_CODES = {"m2m100": M2M100, "wmt21": ["en", "ha", "is", "ja", "cs", "ru", "zh", "de"]}


def nllb_affixes(lang_id: int, eos_id: int, legacy_behaviour: bool) -> tuple[list[int], list[int]]:
    """The ids an NLLB tokenizer puts before and after a text in language `lang_id`."""
    return ([], [eos_id, lang_id]) if legacy_behaviour else ([lang_id], [eos_id])


def nllb_post_processor(backend, config: dict):
    """The post-processor NllbTokenizerFast builds when it loads (`set_src_lang_special_tokens`),
    whatever tokenizer.json says: the source language from tokenizer_config's `src_lang` (default
    eng_Latn), placed by its `legacy_behaviour`. An unknown code becomes the unk token, as there."""
    from tokenizers import processors

    from .base import token_text

    def token_id(token: str | None) -> int | None:
        index = backend.token_to_id(token) if token else None
        return backend.token_to_id(token_text(config.get("unk_token")) or "<unk>") if index is None else index

    lang = token_id(config.get("src_lang") or "eng_Latn")
    eos = token_id(token_text(config.get("eos_token")) or "</s>")
    prefix, suffix = nllb_affixes(lang, eos, bool(config.get("legacy_behaviour", False)))
    before, after = [backend.id_to_token(i) for i in prefix], [backend.id_to_token(i) for i in suffix]
    return processors.TemplateProcessing(single=before + ["$A"] + after, pair=before + ["$A", "$B"] + after,
                                         special_tokens=list(zip(before + after, prefix + suffix)))
