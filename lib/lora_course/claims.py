"""Outcome sentences: every sentence of a chapter's prose that states an outcome is glued, guarded or exempt.

    check_notebook(path)        the unbacked outcome sentences of one chapter (a list of Finding)
    check_chapters(paths)       the same for several chapters
    require_backed(paths)       raise CourseError naming the first chapter with an unbacked sentence
    python -m lora_course.claims [CHAPTER ...]    print every finding (all chapters by default)

A sentence states an outcome when its *typed* text (the markdown with glue
references, inline code, roles, math, link targets and quotations masked) holds a
comparison, a multiple, a share or a direction: "more", "faster", "than",
"5x", "3 times", "12%", "rises", "helps", "no difference" and the like (see
OUTCOME). Words inside a glued value are not typed: a verdict glued with
`page.say` or a number glued with `page.glue_text` is computed by the page.
A glued number does not vouch for the words typed around it ("moved the loss
by {glue:text}`x` nats, more than any other knob" is flagged): the typed
"more than" is the claim. Text in double quotes is a quotation (the post's
"adapting all linear layers helps") or a name, not the page's own claim; the
sentence that judges it is checked. Questions that assert nothing ("Would
r = 16 be better?") are skipped; a why-question asserts its premise and is
checked. Bounds ("two GPUs or more"), a product sign ("26 x 2"), an
interval's level ("90% interval") and the name "double quantisation" are not
outcomes.

A flagged sentence passes when every outcome word in it lies inside
- a fragment quoted by `guard(condition, "fragment", evidence)` in a code cell of
  the same notebook (read from the source with `ast`, so only a literal string
  counts; the fragment is matched against the sentence as written, whitespace
  collapsed, backticks and glue references included), or
- a fragment named by an exemption, a MyST comment line in the same markdown
  cell (comments are not rendered):

      % outcome-exempt[KIND]: "fragment of the sentence" reason in words

  KIND is one of EXEMPTION_KINDS: `definition` (what a term, setting or table
  column means), `fact` (a general fact not measured here; the reason names
  its source), `design` (true by how the course is built, e.g. two settings
  that differ by construction). Exemptions are meant to be rare: grep
  `outcome-exempt` to review them all, and a chapter may hold at most
  MAX_EXEMPTIONS of them.

False alarms are accepted on purpose: rewording a sentence, gluing its verdict
with `say`, guarding it or exempting it with a reason costs less than a
sentence the data contradict.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .chapters import chapter_notebooks, select_chapters
from .errors import CourseError

EXEMPTION_KINDS = ("definition", "fact", "design")
MAX_EXEMPTIONS = 6  # per chapter

# Outcome words, matched case-insensitively on whole words of the typed text.
_WORDS = [
    # comparatives and superlatives ("or more", "at most" and the like are bounds, not outcomes)
    r"(?<!or )(?<!one )(?<!two )(?<!three )more", r"(?<!or )less", r"fewer", r"better", r"worse", r"faster", r"slower", r"quicker", r"higher",
    r"lower", r"larger", r"smaller", r"bigger", r"greater", r"cheaper", r"costlier", r"longer", r"shorter",
    r"best", r"worst", r"fastest", r"slowest", r"(?<!rather )(?<!other )than",  # not "rather than", "other than"
    # directions
    r"ris(?:e|es|ing)", r"rose", r"fall(?:s|ing)?", r"fell", r"grow(?:s|ing)?", r"grew",
    r"shrink(?:s|ing)?", r"shrank", r"improve(?:s|d)?", r"improving", r"help(?:s|ed)?", r"hurt(?:s)?",
    r"beat(?:s)?", r"outperform(?:s|ed)?", r"exceed(?:s|ed)?", r"dominat(?:e|es|ed)",
    r"doubl(?:e|es|ed)(?! quanti)",  # not the name "double quantisation"
    r"halv(?:e|es|ed)", r"barely", r"twice", r"half",
    r"(?:a|an|one|two|three) (?:third|quarter|fifth|sixth|eighth|tenth)s? of",  # fractions, not ordinals
    # sameness
    r"no difference", r"(?:do|does|did) not differ",
]
OUTCOME = re.compile(
    r"(?<![\w-])(?:" + "|".join(_WORDS) + r")(?![\w-])"  # words (not parts of `some-name`)
    r"|\b\d+(?:[.,]\d+)?(?:x|×)(?!\w)"  # multiples typed as 5x (not the product sign of "26 x 2")
    r"|\b\d+(?:[.,]\d+)?\s?(?:%|percent\b)(?!\s+(?:[\w-]+\s+){0,2}interval)"  # typed shares (not "90% interval")
    r"|\b(?:\d+(?:[.,]\d+)?|two|three|four|five|six|seven|eight|nine|ten)\s+times\b",  # typed multiples
    re.IGNORECASE,
)

_GLUE = re.compile(r"\{glue(?::\w+)?\}`[^`]*`")
_ROLE = re.compile(r"\{[\w:.-]+\}`[^`]*`")  # any other role: {cite}, {ref}, {doc}, ...
_CODE = re.compile(r"``[^`]+``|`[^`]+`")
_MATH = re.compile(r"\$[^$\n]+\$")
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_QUOTED = re.compile(r'"[^"\n]{1,300}"|\u201c[^\u201d\n]{1,300}\u201d')  # a quotation or a claim's name
_EXEMPTION = re.compile(
    r"^%\s*outcome-exempt\[(?P<kind>[\w-]+)\]:\s*\"(?P<fragment>[^\"]+)\"\s*(?P<reason>.*)$")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "et al.", "cf.", "Fig.", "approx.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[{`*\"'])")
_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Finding:
    """One problem in a chapter's prose: an unbacked outcome sentence, or a malformed exemption."""

    chapter: str  # the notebook's stem
    cell: int  # the cell's index in the notebook (0-based, as nbformat counts)
    sentence: str  # as written, whitespace collapsed
    words: tuple[str, ...]  # the outcome words that nothing backs
    problem: str = "unbacked"  # or "exemption"

    def __str__(self) -> str:
        what = (f"states an outcome ({', '.join(repr(w) for w in self.words)}) that is neither glued nor guarded"
                if self.problem == "unbacked" else self.words[0])
        return f"{self.chapter}, cell {self.cell}: {self.sentence!r} {what}"


@dataclass(frozen=True)
class Exemption:
    kind: str
    fragment: str
    reason: str


def _mask(text: str, pattern: re.Pattern, fill: str = "#") -> str:
    """`text` with every match of `pattern` replaced by as many `fill` characters (positions kept)."""
    return pattern.sub(lambda m: fill * len(m.group(0)), text)


def typed_text(sentence: str) -> str:
    """The sentence with what is not the page's own typed claim masked, same length: glue references, roles,
    code, math, link targets, and text in double quotes (a quotation, such as the post's claims, or a name)."""
    masked = sentence
    for pattern in (_GLUE, _ROLE, _CODE, _MATH, _LINK_TARGET, _QUOTED):
        masked = _mask(masked, pattern)
    return masked


def outcome_spans(sentence: str) -> list[tuple[int, int]]:
    """Where the sentence's typed text states an outcome: (start, end) of each outcome word."""
    return [m.span() for m in OUTCOME.finditer(typed_text(sentence))]


def split_sentences(markdown: str) -> tuple[list[str], list[Exemption | str]]:
    """A markdown cell's sentences (whitespace collapsed), and its exemptions (an Exemption, or the text
    of a malformed `outcome-exempt` line)."""
    blocks: list[list[str]] = [[]]
    exemptions: list[Exemption | str] = []
    in_fence = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            blocks.append([])
            continue
        stripped = line.strip()
        if in_fence:
            continue
        if stripped.startswith("%"):  # a MyST comment
            if "outcome-exempt" in stripped:
                m = _EXEMPTION.match(stripped)
                if m and m["kind"] in EXEMPTION_KINDS and len(m["reason"].split()) >= 3:
                    exemptions.append(Exemption(m["kind"], " ".join(m["fragment"].split()), m["reason"].strip()))
                else:
                    exemptions.append(stripped)
            blocks.append([])
            continue
        if not stripped or stripped.startswith(":::") or stripped.startswith("<!--") or _ITEM.match(line) \
                or stripped.startswith("#") or stripped.startswith("|"):
            blocks.append([])
            if stripped.startswith(":::") or stripped.startswith("<!--") or not stripped:
                continue
            stripped = _ITEM.sub("", stripped)
        blocks[-1].append(stripped)
        if stripped.startswith("#") or stripped.startswith("|"):
            blocks.append([])
    sentences = []
    for block in blocks:
        text = " ".join(" ".join(block).split()).lstrip("#").strip()
        if not text:
            continue
        protected = text
        for abbreviation in _ABBREVIATIONS:
            protected = protected.replace(abbreviation, abbreviation.replace(".", "\0"))
        sentences += [s.replace("\0", ".") for s in _SENTENCE_END.split(protected) if s.strip()]
    return sentences, exemptions


def is_open_question(sentence: str) -> bool:
    """A question that asserts nothing ("Would r = 16 be better?"); a why-question asserts its premise."""
    return sentence.rstrip("*_ ").endswith("?") and not sentence.lstrip("*_ ").lower().startswith("why")


def guarded_fragments(code: str) -> list[str]:
    """The sentence arguments of `guard(...)` calls in a code cell's source, read with `ast` (literal strings
    only; lines of IPython magics are skipped)."""
    source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in code.splitlines())
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    fragments = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if name != "guard":
            continue
        arg = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "sentence"), None)
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            fragments.append(" ".join(arg.value.split()))
    return fragments


def _covered(sentence: str, spans: list[tuple[int, int]], fragments: list[str]) -> list[tuple[int, int]]:
    """The outcome spans that no fragment (found in the sentence) covers."""
    cover = []
    for fragment in fragments:
        start = sentence.find(fragment)
        while fragment and start != -1:
            cover.append((start, start + len(fragment)))
            start = sentence.find(fragment, start + 1)
    return [(a, b) for a, b in spans if not any(s <= a and b <= e for s, e in cover)]


def check_cells(chapter: str, cells: list[dict]) -> list[Finding]:
    """The findings of one notebook's cells (nbformat dicts)."""
    text = lambda cell: "".join(cell.get("source", ""))  # noqa: E731
    guards = [f for cell in cells if cell.get("cell_type") == "code" for f in guarded_fragments(text(cell))]
    findings: list[Finding] = []
    count = 0
    for index, cell in enumerate(cells):
        if cell.get("cell_type") != "markdown":
            continue
        sentences, exemptions = split_sentences(text(cell))
        valid = [e for e in exemptions if isinstance(e, Exemption)]
        count += len(exemptions)
        for bad in (e for e in exemptions if not isinstance(e, Exemption)):
            findings.append(Finding(chapter, index, bad, (
                f"is not an exemption: write % outcome-exempt[KIND]: \"fragment\" and a reason of three words "
                f"or more, KIND one of {', '.join(EXEMPTION_KINDS)}",), "exemption"))
        for e in valid:
            if not any(e.fragment in s for s in sentences):
                findings.append(Finding(chapter, index, e.fragment, (
                    "is exempted, but no sentence of its cell contains it: quote the sentence as written",),
                    "exemption"))
        for sentence in sentences:
            if is_open_question(sentence):
                continue
            spans = outcome_spans(sentence)
            left = _covered(sentence, spans, guards + [e.fragment for e in valid]) if spans else []
            if left:
                findings.append(Finding(chapter, index, sentence, tuple(sentence[a:b] for a, b in left)))
    if count > MAX_EXEMPTIONS:
        findings.append(Finding(chapter, -1, f"{count} exemptions", (
            f"is more than the {MAX_EXEMPTIONS} a chapter may hold: glue the verdict with say() or guard it",),
            "exemption"))
    return findings


def check_notebook(path: str | Path) -> list[Finding]:
    """The unbacked outcome sentences (and malformed exemptions) of one chapter notebook."""
    path = Path(path)
    try:
        cells = json.loads(path.read_text())["cells"]
    except (OSError, ValueError, KeyError) as exc:
        raise CourseError(f"Cannot read the notebook {path} ({exc}): give the path of a chapter's .ipynb file.") from None
    return check_cells(path.stem, cells)


def check_chapters(paths) -> list[Finding]:
    return [f for path in paths for f in check_notebook(path)]


def require_backed(paths) -> None:
    """Before a build: stop, in one sentence, at the first chapter whose prose states an unbacked outcome."""
    findings = check_chapters(paths)
    if findings:
        first, others = findings[0], len(findings) - 1
        raise CourseError(
            f"Chapter {first}" + (f" (and {others} more finding(s))" if others else "")
            + ": glue the verdict with say(), guard the sentence with guard(), or exempt it with "
              "'% outcome-exempt[KIND]: \"fragment\" reason' in its cell (python -m lora_course.claims lists them all)."
        )


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    paths = select_chapters(names) if names else chapter_notebooks()
    findings = check_chapters(paths)
    for f in findings:
        print(f)
    print(f"{len(findings)} sentence(s) to glue, guard or exempt in {len(paths)} chapter(s).")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
