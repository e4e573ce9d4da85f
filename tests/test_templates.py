"diffvqa.templates: one spelling per question (normalize_question) and the repair of glued findings in difference answers."
import itertools
import re
from pathlib import Path

import pytest

from diffvqa.templates import (DIFFERENCE_QUESTION, FINDINGS, ParsedDifference, abnormality_question, difference_answer,
                               difference_question, level_question, location_question, normalize_question,
                               parse_difference_answer, presence_question, repair_difference_answer, type_question,
                               view_question)

DATA_FORMAT = Path('/work/shared/data-format.md')


def template_questions():
    "Every question the builders write, over the whole vocabulary."
    qs = [difference_question(s) for s in (None, 'left', 'right')]
    qs += [abnormality_question(i, loc) for i in range(3) for loc in ('left lung', 'lower lobe', 'right apical area')]
    qs += [view_question(i) for i in range(3)]
    for f in FINDINGS:
        qs += [presence_question(f, i, 'left lower lobe') for i in range(3)] + [location_question(f, i) for i in range(3)]
        qs += [level_question(f), type_question(f)]
    return qs


def data_format_questions():
    "The question templates listed in shared/data-format.md, placeholders filled."
    if not DATA_FORMAT.is_file(): pytest.skip('shared/data-format.md not on this machine')
    text = DATA_FORMAT.read_text()
    block = text[text.index('## Question templates'):text.index('## Answer templates')]
    fill = {'<finding>': 'pleural effusion', '<location>': 'left lower lobe', '<post-location>': 'left lung',
            '<left|right>': 'left'}
    out = []
    for q in re.findall(r'`([^`]+\?)`', block):
        for k, v in fill.items(): q = q.replace(k, v)
        out.append(q)
    assert len(out) >= 16                    # 3 + 3 + 3 + 3 + 1 + 1 + 2 templates
    return out


@pytest.mark.parametrize('source', [template_questions, data_format_questions])
def test_release_forms_are_fixed_points(source):
    qs = source()
    assert qs and all(normalize_question(q) == q for q in qs), [q for q in qs if normalize_question(q) != q][:3]


def test_equivalent_spellings_map_to_the_release_form():
    spellings = ['what has changed compared to the reference image?', '  What has changed compared to the Reference Image ?  ',
                 'WHAT HAS CHANGED COMPARED TO THE REFERENCE IMAGE', 'What has changed\ncompared to the reference image.',
                 'what has changed compared to the reference image ? ?', 'what\u00a0has changed compared to the reference image\uff1f']
    assert {normalize_question(s) for s in spellings} == {DIFFERENCE_QUESTION}
    assert normalize_question('IS THIS PA VIEW') == 'is this PA view?' and normalize_question('is this ap view ?') == 'is this AP view?'
    assert normalize_question('') == normalize_question(' \t ') == normalize_question('?') == ''


@pytest.mark.parametrize('q', template_questions()[:40] + ['  Is there EDEMA , or not ?', 'WHAT  TYPE is the opacity!!'])
def test_normalize_question_is_idempotent(q):
    once = normalize_question(q)
    assert normalize_question(once) == once


def generator_list(items):
    "A list by the release generator's rule: an item equal to the last one is written ' and <item>' (no comma), others ' <item>,'."
    if len(items) == 1: return items[0]
    return ''.join(f' and {x}' if x == items[-1] else f' {x},' for x in items).strip()


def test_the_literal_release_answer():
    a = ('the main image has additional findings of lung opacity, and pneumonia atelectasis, granuloma, and pneumonia '
         'than the reference image. ')
    assert a.startswith('the main image has additional findings of ' + generator_list(
        ['lung opacity', 'pneumonia', 'atelectasis', 'granuloma', 'pneumonia']))
    p = parse_difference_answer(a, strict=True)
    assert p.added == ('lung opacity', 'pneumonia', 'atelectasis', 'granuloma') and not p.removed
    assert p.glued == ('pneumonia atelectasis',) and p.repeated == ('pneumonia',) and p.repaired
    assert repair_difference_answer(a) == ('the main image has additional findings of lung opacity, pneumonia, atelectasis, '
                                           'and granuloma than the reference image. ')


LASTS = ('pneumonia', 'atelectasis', 'lung opacity', 'pleural effusion', 'tortuosity of the descending aorta')
NEXTS = ('atelectasis', 'edema', 'granuloma', 'enlargement of the cardiac silhouette', 'air collection')


@pytest.mark.parametrize('last,nxt', [(a, b) for a, b in itertools.product(LASTS, NEXTS) if a != b])
@pytest.mark.parametrize('shape', [
    lambda L, N: ['hernia', L, N, 'granuloma', L],            # the release's case
    lambda L, N: [L, N, L],                                    # glued at the start of the list
    lambda L, N: ['hernia', L, L],                             # the repeat just before the end: 'L and L'
    lambda L, N: [L, L],                                       # only the repeat
    lambda L, N: ['hernia', L, N, L, 'scoliosis', L],          # two glued copies
])
def test_glued_lists_parse_to_the_listed_set(last, nxt, shape):
    items = shape(last, nxt)
    want = tuple(dict.fromkeys(items))
    for head, field in (('the main image has additional findings of', 'added'),
                        ('the main image is missing the findings of', 'removed')):
        level = 'the level of edema has changed from mild to moderate. '
        answer = f'{level}{head} {generator_list(items)} than the reference image. '
        p = parse_difference_answer(answer, strict=True)
        assert getattr(p, field) == want and p.repaired and not p.unparsed
        assert p.level_changes[0].finding == 'edema'
        fixed = repair_difference_answer(answer)
        assert fixed == difference_answer(**{field: want}, level_changes=p.level_changes)
        q = parse_difference_answer(fixed, strict=True)
        assert getattr(q, field) == want and not q.repaired                # the repaired answer is clean


def test_clean_answers_are_not_touched():
    for added, removed in [(['edema'], []), (['consolidation', 'pneumonia'], ['pneumothorax']),
                           ([], ['pleural effusion', 'pneumothorax', 'atelectasis']), ([], [])]:
        a = difference_answer(added, removed)
        p = parse_difference_answer(a, strict=True)
        assert (list(p.added), list(p.removed), p.repaired) == (added, removed, False)
        assert repair_difference_answer(a) == a
    # a name that is not a finding is not split, whatever precedes it: it is left for the report of unknown names
    p = parse_difference_answer('the main image has additional findings of infection, and pneumonia infection, edema, '
                                'and pneumonia than the reference image. ')
    assert p.added == ('infection', 'pneumonia infection', 'edema', 'pneumonia') and not p.repaired


def test_parsed_difference_default_is_nothing():
    assert ParsedDifference() == parse_difference_answer('nothing has changed.', strict=True)
