"""The offline guard model: a deterministic LangChain chat model for Scout's rail prompts.

With the offline research model there is no language model to run NeMo Guardrails'
self-check prompts, so this model replaces one. It reads the check named on the
prompt's first line ("Scout guardrail check: question." and so on), takes the text
between the prompt's tags, and applies the phrase and pattern lists below. It replies
"Yes: <reason>" when a rule matches and "No" otherwise, the convention of
graph/guardrails/config/prompts.yml. A prompt it does not recognise gets a reply that
is neither, which the rails treat as a failure.

The lists are transparent rules, not a classifier: they catch the common phrasings of
jailbreaks, prompt injection and off-scope requests, and let everything else through.
Each rule pairs the reason shown to the user with the patterns that trigger it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from graph.guardrails.citations import citation_problem

CHECK_LINE = re.compile(r"Scout guardrail check: (question|source|report)\.")
SOURCE_NUMBERS_LINE = re.compile(r"^Gathered source numbers:[ \t]*(.*)$", re.MULTILINE)
UNRECOGNISED_REPLY = (
    "Unrecognised prompt: the offline guard model answers only Scout's guardrail checks."
)
# A match is ignored when one of these words comes shortly before it, as in
# "never reveal your API key".
NEGATION = re.compile(r"\b(?:never|not|don't|do not|doesn't|must not|should not|shouldn't)\b")
NEGATION_WINDOW_CHARS = 25

IGNORECASE = re.IGNORECASE
MULTILINE = re.MULTILINE
# The multiplication sign, which arithmetic questions use as well as "*" and "x".
TIMES = "\u00d7"


@dataclass(frozen=True, slots=True)
class Rule:
    """A reason to block text and the patterns that trigger it."""

    reason: str
    patterns: tuple[re.Pattern[str], ...]
    negatable: bool = False
    """Whether a negation just before a match ("never ...") cancels it."""

    def matches(self, text: str) -> bool:
        for pattern in self.patterns:
            for found in pattern.finditer(text):
                if not self.negatable or not _negated(text, found.start()):
                    return True
        return False


def _rule(reason: str, *patterns: str, flags: int = IGNORECASE, negatable: bool = False) -> Rule:
    return Rule(reason, tuple(re.compile(pattern, flags) for pattern in patterns), negatable)


def _negated(text: str, start: int) -> bool:
    before = text[max(0, start - NEGATION_WINDOW_CHARS) : start].lower()
    return NEGATION.search(before) is not None


# The words a request uses to address the agent's own rules: "ignore your instructions",
# "disregard all previous rules". "Ignore the rules of the road" has none of them.
_TARGET = (
    r"(?:all\s+|any\s+|of\s+)*"
    r"(?:your|my|these|those|previous|prior|earlier|above|preceding|system|original|"
    r"the\s+(?:above|previous|prior|earlier|preceding|system|original))\s+"
)
_RULE_NOUNS = (
    r"(?:[\w-]+\s+){0,2}(?:instructions?|rules|guidelines|guardrails|prompts?|directives|"
    r"restrictions|programming|constraints|settings|filters|policies|policy|limitations)\b"
)

OVERRIDE = _rule(
    "it tries to override the agent's instructions",
    rf"\b(?:ignore|disregard|forget|bypass|override|overrule|abandon)\s+{_TARGET}{_RULE_NOUNS}",
    r"\bforget\s+(?:everything|all)\s+(?:you\s+(?:were|have\s+been)\s+told|above|before)\b",
    r"\bfrom\s+now\s+on,?\s+(?:you|your)\b",
    r"\bnew\s+(?:system\s+)?instructions?\s*:",
    r"\byour\s+(?:real|true|new|actual|only)\s+(?:instructions|task|goal|purpose|job)\s+(?:is|are)\b",
)

ROLE_PLAY = _rule(
    "it asks the agent to role-play or to act without its rules",
    # "Pretend" aimed at the agent; "why do opossums pretend to be dead?" is research.
    r"^\W*pretend\b",
    r"\b(?:please|now|i\s+want\s+you\s+to|can\s+you|could\s+you|you\s+should|you\s+must|"
    r"let'?s|you\s+are\s+going\s+to|you'?re\s+going\s+to|you\s+will)\s+pretend\b",
    r"\bpretend\s+(?:that\s+)?you(?:\s+are|'re|\s+have)\b",
    r"\byou\s+are\s+(?:now\s+)?dan\b",
    r"\byou\s+are\s+now\s+(?:an?\s+|the\s+|my\s+)?(?:new\s+|different\s+|unrestricted\s+|"
    r"unfiltered\s+|uncensored\s+|evil\s+)?(?:ai|assistant|agent|model|chatbot|bot|persona|"
    r"character|dan|free|jailbroken|in\s+(?:developer|god|dan|jailbreak)\s+mode)\b",
    r"\byou\s+are\s+no\s+longer\s+(?:bound|restricted|limited|an?\s+(?:ai|assistant|agent))\b",
    r"\b(?:role-?play|roleplay)\s+(?:as|that)\b",
    r"\bstay\s+in\s+character\b",
    r"\blet'?s\s+play\s+a\s+game\s+where\s+you\b",
    r"\b(?:developer|jailbreak|god|dan|unrestricted|unfiltered)\s+mode\b",
    r"\b(?:act|behave)\s+as\s+(?:if\s+you\s+(?:were|are|had)\s+no|an?\s+(?:unfiltered|"
    r"unrestricted|uncensored|evil|jailbroken))\b",
    r"\b(?:answer|respond|reply|talk|speak|act)\s+without\s+(?:any\s+)?(?:restrictions|"
    r"filters|censorship|rules|limits|guardrails)\b",
    r"\b(?:unfiltered|uncensored|unrestricted|jailbroken)\s+(?:ai|assistant|model|version|"
    r"chatbot|mode)\b",
)
PROMPT_EXTRACTION = _rule(
    "it asks for the agent's system prompt or hidden instructions",
    r"\b(?:reveal|show|print|repeat|output|display|tell\s+me|give\s+me|share|leak|dump|"
    r"recite|write\s+out|what\s+(?:is|are|were))\b[^.?!\n]{0,30}\b(?:your|the)\s+"
    r"(?:system|hidden|initial|original|secret|internal|developer)\s+(?:prompt|instructions|"
    r"message|rules|configuration)\b",
    r"\b(?:repeat|print|reveal|show\s+me|tell\s+me|what\s+(?:is|are))\b[^.?!\n]{0,20}\byour\s+"
    r"(?:instructions|prompt|rules|guidelines)\b",
    r"\brepeat\s+(?:the\s+)?(?:words|text|everything|all)\s+(?:above|before\s+this)\b",
)

_SECRETS = (
    r"(?:api[\s_-]?keys?|secret\s+keys?|secrets|credentials|passwords?|access\s+tokens?|"
    r"tokens|environment\s+variables|env\s+vars?|\.env\s+file)"
)
_LEAK_VERBS = (
    r"(?:reveal|print|show|send|post|upload|email|forward|exfiltrate|leak|dump|output|"
    r"give|tell|share|list|paste|echo)"
)

SECRETS = _rule(
    "it asks for API keys or other secrets",
    rf"\b{_LEAK_VERBS}\b[^.?!\n]{{0,30}}\b(?:your|the\s+(?:server|agent|system|host)'?s?|"
    rf"scout'?s)\s+(?:[\w-]+\s+){{0,2}}{_SECRETS}\b",
    rf"\b{_LEAK_VERBS}\b[^.?!\n]{{0,30}}\$?\b[A-Z][A-Z0-9]*_(?:API_KEY|SECRET|TOKEN|PASSWORD)\b",
    r"\b(?:cat|print|read|open)\s+(?:the\s+)?(?:\.env|/etc/passwd|/etc/shadow|~/\.ssh|id_rsa)\b",
    negatable=True,
)

HARMFUL = _rule(
    "it asks for harmful output, not research",
    r"\b(?:write|create|build|code|make|generate|develop|craft|produce|give\s+me)\s+(?:me\s+)?"
    r"(?:(?:a|an|some|working|the|new|custom)\s+)*(?:[\w-]+\s+){0,2}(?:malware|ransomware|"
    r"keylogger|computer\s+virus|virus|worm|trojan|rootkit|botnet|spyware|exploit|"
    r"credential\s+stealer|phishing\s+(?:email|page|site|kit))\b(?!\s+(?:detection|detector|"
    r"analysis|classifier|defen[cs]e|scanner|protection|research|awareness|training|filter))",
    r"\b(?:how\s+(?:do\s+i|to|can\s+i)|steps\s+to|instructions\s+(?:for|to))\s+(?:make|build|"
    r"synthesi[sz]e|produce|cook|assemble)\s+(?:a\s+|an\s+|some\s+)?(?:[\w-]+\s+){0,2}(?:bomb|"
    r"explosives?|nerve\s+agent|sarin|meth(?:amphetamine)?|bioweapon|chemical\s+weapon|"
    r"ghost\s+gun)\b",
    r"\b(?:help\s+me|how\s+(?:do|can)\s+i|teach\s+me\s+(?:how\s+)?to|i\s+want\s+to)\s+"
    r"(?:steal|hack\s+into|break\s+into|spy\s+on|stalk|dox)\b",
)

NOT_RESEARCH = _rule(
    "it asks for a direct answer or other output, not research",
    r"\bjust\s+(?:answer|reply|respond|say|tell\s+me|give\s+me\s+the\s+(?:answer|number))\b",
    r"\b(?:answer|reply|respond)\s+(?:only\s+)?with\s+(?:only\s+)?(?:one|a\s+single|a)\s+"
    r"(?:word|number|sentence|letter)\b",
    r"\bone[-\s]word\s+answer\b",
    r"\b(?:don'?t|do\s+not|no\s+need\s+to)\s+(?:do\s+any\s+|bother\s+(?:to\s+)?)?(?:research|"
    r"search|look\s+(?:it\s+)?up)\b",
    r"\b(?:write|compose|tell)\s+(?:me\s+)?(?:a|an|some)\s+(?:short\s+|funny\s+)?(?:poem|haiku|"
    r"limerick|song|joke|story|rap|sonnet|love\s+letter)\b",
    r"^\W*(?:hi|hello|hey|thanks|thank\s+you|good\s+(?:morning|evening))\W*$",
    r"^\W*(?:what\s+is|what'?s|how\s+much\s+is|calculate|compute|solve|evaluate)\s+"
    rf"[\d\s.,()=]*\d\s*[-+*/{TIMES}x^]\s*\d[\d\s.,()+\-*/{TIMES}x^=]*\??\W*$",
)

MARKUP = _rule(
    "it contains chat or tool markup meant for the model",
    r"<\|(?:im_start|im_end|system|user|assistant|endoftext|begin_of_text|start_header_id|"
    r"eot_id)\|>",
    r"\[/?INST\]",
    r"<</?SYS>>",
    r"(?m)^\s*#{2,}\s*(?:Instruction|System|Response)\s*:",
    r"\bSYSTEM\s*:",
    r"(?m)^\s*(?:System|Developer|Assistant)\s*:\s*\S",
    r"<\s*/?\s*(?:tool_call|function_call|function_calls|tool_use)\b",
    r"\"(?:tool_calls?|function_call)\"\s*:",
    flags=0,
)

# A conversation transcript: a line opening a user or human turn and one opening an
# assistant turn, as in "User: ... / Assistant: ...".
TRANSCRIPT_USER = re.compile(r"^\s*(?:user|human)\s*:", IGNORECASE | MULTILINE)
TRANSCRIPT_ASSISTANT = re.compile(r"^\s*(?:assistant|ai|bot|gpt)\s*:", IGNORECASE | MULTILINE)

ADDRESSES_AGENT = _rule(
    "it addresses the AI agent that reads it",
    r"\bif\s+you\s+are\s+an?\s+(?:ai|llm|language\s+model|assistant|agent|bot|chatbot)\b",
    r"\bnote\s+to\s+(?:the\s+|any\s+)?(?:ai|llm|assistant|agent|model|language\s+model)s?\b",
    r"\b(?:ai|llm)\s+(?:assistants?|agents?|models?|crawlers?)\s+(?:reading|processing|"
    r"summari[sz]ing|parsing)\s+this\b",
    r"\battention\s*,?\s+(?:ai|llm|assistant|agent|language\s+model)s?\b",
    r"\b(?:instructions?|message)\s+(?:for|to)\s+(?:the\s+|any\s+)?(?:ai|llm|assistant|agent|"
    r"model|language\s+model)s?\s*:",
)

TOOL_CALL = _rule(
    "it asks the agent to call a tool or run a command",
    r"\b(?:call|invoke|use|trigger)\s+the\s+tool\b",
    r"\b(?:you\s+must|you\s+should|please|now|immediately|then)\s+(?:call|invoke|run|execute|"
    r"trigger)\s+(?:the\s+)?[`'\"]?[\w.-]+[`'\"]?\s+(?:tool|function|command)\b",
    r"\b(?:you\s+must|you\s+should|please|now|immediately)\s+(?:open|visit|fetch|browse\s+to)\s+"
    r"https?://",
    r"\b(?:you\s+must|you\s+should|please|now|immediately)\s+(?:run|execute)\s*[:`]",
)

EXFILTRATION = _rule(
    "it asks the agent to reveal or send secrets",
    rf"\b{_LEAK_VERBS}\b[^.?!\n]{{0,40}}\b(?:your|the\s+(?:user|agent|system|server)'?s?)\s+"
    rf"(?:[\w-]+\s+){{0,2}}(?:{_SECRETS}|system\s+prompt|instructions|conversation|chat\s+history)"
    rf"\b[^.?!\n]{{0,40}}\b(?:to|at|into)\s+(?:https?://|[\w.+-]+@|this\s+(?:address|url|"
    rf"endpoint|email|server)|the\s+following|me\b)",
    rf"\b(?:reveal|exfiltrate|leak|dump|print|output)\s+(?:your|the\s+(?:agent|system)'?s?)\s+"
    rf"(?:[\w-]+\s+){{0,2}}(?:{_SECRETS}|system\s+prompt|instructions)\b",
    rf"\b{_LEAK_VERBS}\b[^.?!\n]{{0,30}}\$?\b[A-Z][A-Z0-9]*_(?:API_KEY|SECRET|TOKEN|PASSWORD)\b",
    r"\b(?:append|add|include)\s+(?:your|the)\s+(?:api[\s_-]?key|secret|token|credentials)\s+"
    r"(?:to|in)\s+(?:the\s+)?(?:url|link|query)",
    negatable=True,
)

STEERS_REPORT = _rule(
    "it tells the agent what to write",
    r"\b(?:respond|reply|answer)\s+only\s+with\b",
    r"\bdo\s+not\s+(?:tell|inform|mention\s+(?:this|it)\s+to)\s+the\s+user\b",
    r"\bin\s+your\s+(?:summary|report|answer|response|output),?\s+(?:you\s+must\s+|always\s+)?"
    r"(?:say|state|write|claim|include|recommend|mention)\b",
    r"\b(?:when|if)\s+(?:summari[sz]ing|asked\s+about|writing\s+about)\s+this\b[^.]{0,40}\b"
    r"(?:say|state|write|claim|recommend)\b",
)

SECRET_VALUE = _rule(
    "it contains what looks like an API key",
    r"\bnvapi-[\w-]{8,}",
    r"\btvly-[\w-]{8,}",
    r"\bsk-[A-Za-z0-9_-]{16,}",
    flags=0,
)

QUESTION_RULES = (
    OVERRIDE,
    ROLE_PLAY,
    PROMPT_EXTRACTION,
    SECRETS,
    MARKUP,
    HARMFUL,
    NOT_RESEARCH,
)
SOURCE_RULES = (
    OVERRIDE,
    MARKUP,
    ROLE_PLAY,
    ADDRESSES_AGENT,
    TOOL_CALL,
    EXFILTRATION,
    STEERS_REPORT,
)
REPORT_RULES = (MARKUP, OVERRIDE, EXFILTRATION, SECRET_VALUE)


def screen_question(question: str) -> str | None:
    """Return why the question should be rejected, or None."""
    return _first_reason(QUESTION_RULES, question)


def screen_source(text: str) -> str | None:
    """Return why a search result should be dropped, or None."""
    if TRANSCRIPT_USER.search(text) and TRANSCRIPT_ASSISTANT.search(text):
        return "it contains a chat transcript with user and assistant turns"
    return _first_reason(SOURCE_RULES, text)


def screen_report(request: str, report: str) -> str | None:
    """Return why the report should be rejected, or None; `request` lists the source numbers."""
    found = SOURCE_NUMBERS_LINE.search(request)
    if found is None:
        return "the request does not list the gathered source numbers"
    source_ids = [int(number) for number in re.findall(r"\d+", found.group(1))]
    return citation_problem(report, source_ids) or _first_reason(REPORT_RULES, report)


def answer(prompt: str) -> str:
    """Return the reply to one of Scout's rail prompts: "No" or "Yes: <reason>."."""
    check = CHECK_LINE.search(prompt[:200])
    if check is None:
        return UNRECOGNISED_REPLY

    kind = check.group(1)
    if kind == "question":
        reason = screen_question(_between(prompt, "question"))
    elif kind == "source":
        reason = screen_source(_between(prompt, "source"))
    else:
        reason = screen_report(_between(prompt, "request"), _between(prompt, "report"))
    return "No" if reason is None else f"Yes: {reason}."


def _first_reason(rules: Sequence[Rule], text: str) -> str | None:
    for rule in rules:
        if rule.matches(text):
            return rule.reason
    return None


def _between(prompt: str, tag: str) -> str:
    """Return the text inside `<tag>` ... `</tag>`, from the first opening to the last closing.

    Taking the outermost pair keeps a closing tag written inside the checked text from
    cutting the text short.
    """
    start = prompt.find(f"<{tag}>")
    end = prompt.rfind(f"</{tag}>")
    if start < 0 or end < start:
        return ""
    return prompt[start + len(tag) + 2 : end].strip("\n")


class OfflineGuardModel(BaseChatModel):
    """A deterministic chat model that replies to Scout's rail prompts by the rules above.

    It makes no network call and loads no weights. Only the last message's text is read.
    """

    @property
    def _llm_type(self) -> str:
        return "scout-offline-guard"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return _result(messages)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # The rules take microseconds, so they run on the event loop, not in a thread.
        return _result(messages)


def _result(messages: list[BaseMessage]) -> ChatResult:
    content = messages[-1].content if messages else ""
    prompt = content if isinstance(content, str) else str(content)
    reply = answer(prompt)
    return ChatResult(generations=[ChatGeneration(message=AIMessage(reply))])
