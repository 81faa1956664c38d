"""Each kind of context the triage engine reads, on sentences written for this test: the same
red flag counts or not depending on whether it is denied, long past, imagined, someone else's
or a habit, and counts again when the message says it is happening now."""
from __future__ import annotations

import pytest

from assistant.safety import triage


def level(text: str) -> str:
    return triage(text).level


@pytest.mark.parametrize("text, expected", [
    ("I have no chest pain and no shortness of breath, just a runny nose", "none"),
    ("she does not have a stiff neck or a fever, only a blocked nose", "none"),
    ("never had a seizure in my life, is epilepsy inherited?", "none"),
    ("not suicidal at all, just tired from night shifts", "none"),
    # a denial covers its own clause: the sign after the comma is stated
    ("no fever, but his neck is stiff and he has a temperature of 39", "emergency"),
    ("no one listens to me and I want to die", "crisis"),
])
def test_negated(text, expected):
    assert level(text) == expected, text


@pytest.mark.parametrize("text, expected", [
    ("my husband had a seizure when he was a teenager, can he get a driving licence", "none"),
    ("I tried to kill myself in 2015 and got help, how do I tell my partner", "none"),
    ("she cut herself as a teen and the old scars itch in summer", "none"),
    ("my dad had a stroke years ago, which diet is best for him", "none"),
    ("my cousin felt suicidal last year but she is doing better now", "none"),
    # the same history, with something happening now in its clause
    ("he had a seizure when he was 12 and he is having another seizure right now", "emergency"),
    ("I tried to kill myself years ago and I am thinking about suicide again now", "crisis"),
])
def test_historical(text, expected):
    assert level(text) == expected, text


@pytest.mark.parametrize("text, expected", [
    ("what if I get chest pain going down my arm on a long flight", "none"),
    ("if my son ever has a seizure lasting more than 5 minutes what should I do", "none"),
    ("I am worried I might get a thunderclap headache on this medicine", "none"),
    # imagined no longer: it is happening
    ("what if this chest pain going down my arm right now is a heart attack", "emergency"),
    ("I am scared I am having a heart attack", "emergency"),
])
def test_hypothetical(text, expected):
    assert level(text) == expected, text


@pytest.mark.parametrize("text, expected", [
    # someone present, now: counts the same as the writer
    ("my neighbour collapsed in the garden and is not breathing", "emergency"),
    ("my friend's face is drooping on one side and her speech is slurred", "emergency"),
    ("a man at the bus stop is having a seizure that will not stop", "emergency"),
    ("my brother says he wants to kill himself", "crisis"),
    ("somebody collapsed in the car park and is not breathing", "emergency"),
    ("someone stabbed my cousin, he is bleeding a lot", "emergency"),
    # someone else, long ago or in general: no
    ("a colleague had a stroke last year, how can I support her return to work", "none"),
    ("what are the warning signs of a stroke in someone older", "none"),
    ("what should you do if somebody is having a seizure", "none"),
])
def test_someone_else(text, expected):
    assert level(text) == expected, text


@pytest.mark.parametrize("text, expected", [
    ("I sometimes get short of breath when I climb the stairs at work", "none"),
    ("my dad has slurred speech since his stroke, is speech therapy worth it", "none"),
    ("my mum with dementia gets confused every evening, any tips", "none"),
    ("my son stutters when he is nervous, should I worry", "none"),
    # a new change on top of the usual: counts
    ("I sometimes get chest pain but right now it is crushing and going into my jaw", "emergency"),
    ("my mum is suddenly confused since this morning and does not know where she is", "emergency"),
    ("my daughter has fits now and then but this one will not stop", "emergency"),
    ("my wife had a stroke in 2019 and her speech is slurred worse than usual since twenty minutes ago", "emergency"),
    ("my dad had a stroke 3 years ago, his speech has been a bit slurred since then", "none"),
])
def test_habitual_or_chronic_baseline(text, expected):
    assert level(text) == expected, text
