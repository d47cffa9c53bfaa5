"""Refusals: a refusal *statement* in the opening sentences, not an apology for the user's trouble."""

from __future__ import annotations

import re

from workers.filters.text import ascii_quotes, sentences

REFUSAL_SENTENCES = 3  # a refusal is stated in the opening sentences, after at most a short preamble
REFUSAL_CHARS = 2000  # ... which are read from the text's first characters only
# Quoted, coded or block-quoted text: an answer that quotes a refusal is not one (double quotes,
# single quotes around a phrase but not apostrophes, inline code, fenced code, "> " lines).
QUOTED = re.compile(r"```.*?(?:```|$)|`[^`\n]*`|\"[^\"\n]{0,400}\""
                    r"|(?<![\w'])'(?=\w)(?:[^'\n]|'(?=\w)){0,400}'(?!\w)|^[ \t]*>.*$", re.DOTALL | re.MULTILINE)
# What may precede a refusal inside its sentence: an apology, a connective, or a clause and comma.
_LEAD = (r"(?:^|[,;:\u2014\u2013]\s|(?:(?:i'm|i am|im) (?:so |very |really |truly |terribly )?sorry|sorry"
         r"|(?:my )?apologies|i (?:sincerely )?apologi[sz]e|i'm afraid|i am afraid|unfortunately|regrettably|sadly"
         r"|but|however|though|still|so|and|that said|that being said|respectfully|honestly|ultimately|even so|no)"
         r"(?:,|\s+but|\s+that|\s*[\u2014\u2013-])?\s)")
_FILL = (r"(?:(?:and will not|and won't|really|actually|currently|directly|personally|simply|in good conscience"
         r"|ethically|legally|responsibly|safely|fully|just|even|possibly|be able to|be),?\s)*")
_VERB = (r"(?:help(?!\s+(?:but|thinking|feeling|wondering|noticing|laughing|smiling|myself|it)\b)\w*|assist\w*"
         r"|provid\w*|compl(?:y|ying)\b|fulfil\w*|creat\w*|writ(?:e|ing)\b|generat\w*|produc\w*|giv(?:e|ing)\b"
         r"|shar(?:e|ing)\b|offer\w*|engag\w*|support\w*|participat\w*|answer(?:ing)?\b(?! for\b)|complet(?:e|ing)\b"
         r"|draft\w*|discuss\w*|continu\w*|condon\w*|encourag\w*|endors\w*|facilitat\w*|promot\w*|suppl(?:y|ying)"
         r"|disclos\w*|reveal\w*|build\w*|develop\w*|teach\w*|guid(?:e|ing)\b|walk you through|explain how"
         r"|diagnos\w*|prescrib\w*|advis(?:e|ing)\b"
         r"|tell you how|role-?play\w*|take part|be (?:a )?part of|be involved|be (?:of )?(?:any )?(?:help|assistance"
         r"|service)|contribut\w*|respond\w*|accommodat\w*|carry out|go along|browse the (?:internet|web)"
         r"|access (?:to )?(?:the internet|the web|real-time|live|current|external|websites?|links?|urls?)"
         r"|do(?:ing)?(?:\s+(?:that|this|so|it|what you(?:'re| are) asking)\b|(?=\s*(?:[.!?,;]|$|for you))))")
# "I can't give you an exact figure without more details" hedges before answering; "I can't
# recommend it enough" praises.
_HEDGE = (r"(?![^.!?]{0,60}\b(?:enough|definitive\w*|definite|exact\w*|precise\w*|for (?:certain|sure)"
          r"|with (?:certainty|confidence)|guarantee\w*|without (?:more|knowing|seeing|additional|further)"
          r"|straight|simple|single|universal|one-size|blanket|exhaustive|comprehensive|more than"
          r"|(?:medical|legal|financial|professional|tax|investment) advice\b[^.!?]*\bbut)\b)")
_ADVERB = r"(?:(?:really|just|simply|honestly|definitely|absolutely|unfortunately|currently|still) )?"
_I_AM = r"(?:i'm|i am|im) " + _ADVERB
_CANNOT = (r"(?:(?:i )?" + _ADVERB + r"(?:can ?not|can't|cant|could not|couldn't|won't|will not)"
           r"|i " + _ADVERB + r"(?:refuse to|would rather not|would prefer not to"
           r"|(?:do not|don't) think i (?:can|should))"
           r"|i'd rather not|i'd prefer not to|i can only|(?:i'm|i am) only able to"
           r"|" + _I_AM + r"(?:unable|not able|not going|not in a position|not allowed|not permitted|not programmed"
           r"|not designed|not willing)(?: to)?)\s")
_DONT = (r"i (?:don't|do not) (?:help|assist|engage|generate|produce|provide|create|write|do)"
         r" (?:with|in|people|anyone|content|that|this|those|such|requests?)\b")
_DECLINE = (r"(?:i|i'll|i'd|i'm|i am)(?: (?:must|have to|will have to|need to|going to(?: have to)?|will|would))?\s"
            r"(?:respectfully |politely )?(?:decline|refuse\b(?!\s+to\b)|pass on|pass(?=\s*(?:[.!,;]|$))|say no"
            r"|turn (?:this |that |it )?down)\b"
            r"|i (?:do not|don't) feel comfortable\b|" + _I_AM + r"not (?:comfortable|ok|okay)\b"
            r"|i (?:can't|cannot|won't)(?=\s*(?:[.!]|$))|no can do\b")
_AI = (r"(?:as|being) an? (?:responsible |helpful |ethical |honest |harmless |text-based |large )?"
       r"(?:ai|artificial intelligence|language model|llm|chatbot|virtual assistant)"
       r"(?: language model| model| assistant| chatbot| system)?"
       r"(?: (?:developed|created|trained|built|made|designed) by [\w.-]+(?: \w+)?)?,?\s(?:i|my|it)\b"
       r"|i(?:'m| am) (?:just |only |merely )?an? (?:ai|artificial intelligence|language model|large language model"
       r"|chatbot|virtual assistant)\b"
       r"|i (?:do not|don't) have (?:the (?:ability|capability|capacity|means) to|access to (?:real-time|the internet"
       r"|current|live|up-to-date|external|browsing)|real-time|browsing|internet access"
       r"|personal (?:opinions|experiences|feelings|beliefs|preferences|views)|opinions|feelings|emotions)\b")
_ABLE = (r"i(?:'m| am)? (?:can|could|will|'ll|feel comfortable|comfortable|able to|willing to|allowed to"
         r"|permitted to|going to)\s" + _FILL + _VERB)
_UNABLE = (r"(?:i (?:can't|cannot|can not|won't|will not)|(?:i'm|i am) (?:unable|not able|not comfortable|not allowed"
           r"|not permitted|not willing|not going)|i (?:must|have to|need to|'ll have to|will have to) (?:decline"
           r"|turn down|pass on|refuse))\b")
_THAT = r"(?:that|this|it)(?: request| question| task| topic)?"
_NOT_SOMETHING = (_THAT + r"(?:'s| is)(?: really| just)? not(?: really)? (?:something|a (?:request|task|topic|thing"
                  r"|subject|question)|anything) (?:that )?" + _ABLE +
                  r"|" + _THAT + r" isn't (?:something|a \w+|anything) (?:that )?" + _ABLE +
                  r"|" + _THAT + r"(?:'s| is) (?:something|a (?:request|task|topic|thing)) (?:that )?" + _UNABLE)
REFUSAL_STATEMENT = re.compile(_LEAD + r"(?:" + _CANNOT + _FILL + _VERB + _HEDGE + r"|" + "|".join(
    (_DONT, _DECLINE, _AI, _NOT_SOMETHING)) + r")")
# Refusals by policy, wherever they sit in an opening sentence.
REFUSAL_POLICY = re.compile(
    r"\b(?:this|that|your|such an?|the) (?:request|task|prompt|query|question|content)s? (?:goes against|violates"
    r"|is against|conflicts with|would violate|would go against|is not (?:allowed|permitted)"
    r"|isn't (?:allowed|permitted))\b"
    r"|\b(?:goes against|violates|is against|conflicts with|against) my (?:\w+ ){0,2}(?:guidelines|policies|policy"
    r"|principles|programming|values|ethics|rules)\b"
    r"|\b(?:outside|beyond) (?:of )?(?:the scope of )?(?:what i(?:'m| am)? (?:can|could|able to|allowed to"
    r"|permitted to) (?:\w+ )?" + _VERB + r"|my (?:scope|capabilities|abilities)\b)"
    r"|\bmy (?:\w+ )?(?:guidelines|policies|programming|principles|rules) (?:\w+ )?(?:prevent|prohibit|forbid"
    r"|don't allow|do not allow|doesn't allow|does not allow|won't allow)\b"
    r"|\bit(?: is(?:n't| not)?| would(?:n't| not)? be|'s(?: not)?|'d(?: not)? be) (?:appropriate|inappropriate"
    r"|ethical|unethical|responsible|irresponsible|right) for me to " + _FILL + _VERB)


def refusal_statement(text: str) -> str | None:
    """The refusal stated in the opening sentences of `text` (normalised), or None."""
    for s in sentences(QUOTED.sub(" ", ascii_quotes(text[:REFUSAL_CHARS])))[:REFUSAL_SENTENCES]:
        m = REFUSAL_STATEMENT.search(s) or REFUSAL_POLICY.search(s)
        if m:
            return s[max(m.start() - 20, 0):m.end() + 20].strip()
    return None
