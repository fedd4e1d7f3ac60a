"""Rules: high-precision patterns for injections that have an unmistakable shape.

A rule fires only on text that has almost no innocent reading (a chat-template role
marker inside a user message, "ignore all previous instructions", a markdown image
whose URL carries template placeholders). Paraphrases are the classifier's job; a rule
that fires on "please ignore case when sorting" would cost more trust than it earns.

Each rule carries a score: its precision on the training splits (measured by
``bench/injection_eval.py``), rounded down, so a rule hit and a classifier probability
are on the same scale and ``max`` of them is still a calibrated score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.injection.normalise import Views

_I = re.IGNORECASE | re.MULTILINE


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    category: str
    pattern: re.Pattern[str]
    score: float


@dataclass(frozen=True, slots=True)
class RuleHit:
    rule: str
    category: str
    score: float


_OVERRIDE_VERB = r"(?:ignore|disregard|forget|override|bypass|skip|discard|abandon|drop|dismiss)"
_PRIOR = (r"(?:previous|prior|above|earlier|preceding|foregoing|original|initial|old|"
          r"existing|former|system|developer|safety)")
_DIRECTIVES = (r"(?:instructions?|prompts?|rules|directives?|guidelines|commands?|"
               r"guardrails|restrictions|constraints|programming|policies|messages|context)")

RULES: tuple[Rule, ...] = (
    # Chat-template tokens have no business in message content: they exist to end the
    # current turn and open a forged one.
    Rule("chat_template_token", "role_spoofing", re.compile(
        r"<\|\s*(?:im_start|im_end|im_sep|endoftext|eot_id|start_header_id|end_header_id|"
        r"system|assistant|begin_of_text)\s*\|>|\[/?INST\]|<</?SYS>>|<start_of_turn>", _I), 0.97),
    Rule("markdown_role_header", "role_spoofing", re.compile(
        r"^\s*(?:#{2,}|\*\*|\[)\s*(?:system|developer)(?:\s+(?:prompt|message|override|"
        r"instructions?))?\s*(?:\]|\*\*)?\s*:?\s*(?:\*\*)?\s*$|"
        r"^\s*#{2,}\s*(?:new\s+)?(?:system|developer)\s+(?:prompt|instructions?)\b", _I), 0.95),
    Rule("system_tag", "role_spoofing", re.compile(
        r"<\s*/?\s*(?:system|system_prompt|sys|developer)\s*>|"
        r"^\s*(?:system|developer)\s*(?:message|prompt|override|update|notice)?\s*:\s*"
        r"(?:you\b|ignore|disregard|forget|new instructions|from now on|override)", _I), 0.95),
    # A forged conversation turn or tool call serialised as JSON inside content.
    Rule("fake_role_json", "role_spoofing", re.compile(
        r"[{,]\s*[\"']role[\"']\s*:\s*[\"'](?:system|developer)[\"']|"
        r"[\"'](?:tool_calls|function_call)[\"']\s*:\s*[\[{]\s*[{\"']", _I), 0.93),
    Rule("override_instructions", "instruction_override", re.compile(
        rf"\b{_OVERRIDE_VERB}\s+(?:(?:all|any|every|each|the|your|my|of|these|those|this|"
        rf"that|everything|what(?:ever)?|you\s+were|was|were|been|have|told|given|"
        rf"and)\s+){{0,4}}{_PRIOR}\s+(?:\w+\s+)?{_DIRECTIVES}\b|"
        rf"\b{_OVERRIDE_VERB}\s+(?:all\s+|everything\s+|what\s+|anything\s+)?(?:that\s+)?"
        rf"(?:you\s+(?:were|have\s+been)\s+)"
        rf"(?:told|instructed|given)\b|"
        rf"\b{_OVERRIDE_VERB}\s+(?:everything|all)\s+(?:above|before|prior|previously)\b", _I),
        0.97),
    Rule("new_instructions", "instruction_override", re.compile(
        r"\b(?:new|updated|real|actual|true)\s+(?:system\s+)?instructions?\s*(?:are|follow)?\s*:|"
        r"\byour\s+new\s+(?:task|goal|objective|instructions?|role)\s+(?:is|are)\b|"
        r"\bfrom\s+now\s+on,?\s+you\s+(?:are|will|must|shall|have\s+no|no\s+longer)\b|"
        r"\byou\s+are\s+(?:now|no\s+longer)\s+(?:an?\s+)?(?:DAN|unrestricted|unfiltered|"
        r"uncensored|jailbroken|free|evil|bound|restricted|limited|in\s+developer\s+mode)\b|"
        r"\b(?:developer|god|jailbreak|DAN)\s+mode\s+(?:enabled|activated|on)\b|"
        r"\bdo\s+anything\s+now\b", _I), 0.96),
    # The vocabulary of persona jailbreaks ("DAN", "developer mode", "an AI without
    # ethical guidelines that never refuses"); each alternative fired on no benign
    # training text (neuralchemy, S-Labs, BIPIA contexts, the pydoc corpus).
    Rule("jailbreak_persona", "jailbreak", re.compile(
        r"(?-i:\bDAN\b)|"
        r"\b(?:without|no|free\s+(?:of|from)|any)\s+(?:any\s+)?(?:ethical|moral|content|"
        r"safety)\s+(?:or\s+\w+\s+)?(?:guidelines|restrictions|filters|filtering|constraints|"
        r"limits|boundaries|policies|principles)\b|"
        r"\b(?:ignore|bypass|disregard|break|not\s+bound\s+by|(?:doesn't|does\s+not|don't|"
        r"do\s+not)\s+(?:have\s+to\s+)?(?:follow|abide\s+by|adhere\s+to|care\s+about))\s+"
        r"(?:the\s+|any\s+|all\s+|of\s+)?(?:openai(?:'s)?|usage|safety)\s+(?:content\s+)?"
        r"(?:policy|policies|guidelines|rules|filters?)\b|"
        r"\b(?:you|it|he|she|they)\s+(?:will\s+|must\s+|should\s+|can\s+|shall\s+)?"
        r"(?:never|not|won't|cannot|can't)\s+(?:ever\s+)?refuse\b|"
        r"\b(?:developer|god|unrestricted|evil|opposite|unfiltered|jailbreak)\s+mode\b|"
        r"\b(?:amoral|unfiltered|uncensored|unrestricted|unethical|immoral)\s+(?:and\s+\w+\s+)?"
        r"(?:ai|assistant|chatbot|bot|model|language\s+model|character|version)\b|"
        r"\b(?:stay|remain|staying)\s+in\s+character\b", _I), 0.95),
    Rule("prompt_extraction", "prompt_extraction", re.compile(
        r"\b(?:reveal|show|print|output|repeat|display|leak|dump|recite|return|give|tell|"
        r"write\s+out|spell\s+out|summari[sz]e|translate)\s+(?:me\s+|us\s+)?(?:back\s+)?"
        r"(?:all\s+)?(?:of\s+)?(?:your|the)\s+(?:\w+\s+){0,2}?(?:system\s+prompt|"
        r"(?:initial|original|hidden|secret|full|system|developer|pre-?)\s*(?:prompt|"
        r"instructions|message))\b|"
        r"\brepeat\s+(?:all\s+)?(?:the\s+)?(?:words|text|everything)\s+(?:above|before)\b|"
        r"\b(?:print|output|repeat)\s+everything\s+(?:above|before)\s+this\b|"
        r"\bwhat\s+(?:is|was|are|were)\s+(?:your|the)\s+(?:system\s+prompt|initial\s+"
        r"(?:prompt|instructions))\b", _I), 0.96),
    # A markdown image or link whose URL carries a template slot or a long opaque
    # parameter: rendering it sends conversation data to a third party.
    Rule("exfil_markdown_url", "exfiltration", re.compile(
        r"!?\[[^\]\n]{0,200}\]\(\s*https?://[^)\s]*[?&/][^)\s]*"
        r"(?:\{[^}\s]{1,60}\}|\[[A-Z_ ]{3,40}\]|<[A-Za-z_ ]{3,40}>|\$\{?[A-Za-z_]{3,40}|"
        r"%7B[^)\s]{1,60}%7D)", _I), 0.95),
    Rule("exfil_instruction", "exfiltration", re.compile(
        r"\b(?:append|add|include|encode|put|insert|embed)\s+(?:the\s+|all\s+|this\s+|our\s+)?"
        r"(?:previous\s+|entire\s+|whole\s+|full\s+)?(?:conversation|chat(?:\s+history)?|"
        r"history|messages|system\s+prompt|user'?s?\s+(?:data|messages|password|email)|"
        r"credentials|api\s+keys?|secrets?)\s+(?:\w+\s+){0,4}?(?:to|into|in)\s+(?:the\s+|a\s+|"
        r"this\s+)?(?:url|link|image|query\s+(?:string|parameter)|request)\b", _I), 0.95),
)


def match(views: Views, rules: tuple[Rule, ...] = RULES) -> list[RuleHit]:
    """Every rule that fires on any view, once each, strongest first."""
    hits: dict[str, RuleHit] = {}
    texts = views.all()
    for rule in rules:
        for text in texts:
            if rule.pattern.search(text):
                hits[rule.id] = RuleHit(rule.id, rule.category, rule.score)
                break
    return sorted(hits.values(), key=lambda h: -h.score)
