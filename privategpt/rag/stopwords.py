"""Stop-words and elisions per language.

Stop-words are dropped at indexing and at query time: they carry almost no BM25 weight and make up the
longest posting lists, so keeping them costs index size and query time for nothing. The lists are
deliberately short (function words only); anything contentful is left to BM25's idf. Languages without
a list here rely on the query planner's document-frequency budget instead.
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOP_WORDS: dict[str, frozenset[str]] = {
    "en": _words(
        """
        a about above after again against all am an and any are as at be because been before being below
        between both but by can could did do does doing down during each few for from further had has have
        having he her here hers herself him himself his how i if in into is it its itself just me more most
        my myself no nor not now of off on once only or other our ours ourselves out over own same she
        should so some such than that the their theirs them themselves then there these they this those
        through to too under until up very was we were what when where which while who whom why will with
        would you your yours yourself yourselves also may might must shall upon via whether within without
        yet per etc ie eg
        dont doesnt didnt isnt arent wasnt werent cant couldnt wont wouldnt shouldnt hasnt havent hadnt
        im ive id youre youve youll theyre theyve weve were hes shes thats theres lets
        """
    ),
    "de": _words(
        """
        der die das den dem des ein eine einer eines einem einen und oder aber ist sind war waren wird
        werden wurde wurden hat haben hatte hatten sein seine seiner seinen seinem ihr ihre ihrer ihren
        ihrem ich du er sie es wir mit von zu zum zur im in an am auf aus bei nach für über unter vor als
        auch nicht noch nur so wie wo was wer dass daß sich dieser diese dieses diesem diesen jener man kein
        keine keinen denn doch ob um bis durch gegen ohne mich mir dich dir uns euch ins vom beim
        """
    ),
    "es": _words(
        """
        el la los las un una unos unas y e o u pero es son fue fueron ser era eran está están estaba de del
        al a en con por para sin sobre que qué como cómo cuando donde quien quién se su sus lo le les me te
        nos mi mis tu tus este esta estos estas ese esa esos esas eso esto hay ha han había muy más no ni
        ya también entre hasta desde cual cuál cuales
        """
    ),
    "fr": _words(
        """
        le la les un une des et ou mais est sont était étaient été être a ont avait avaient de du au aux en
        dans par pour sur avec sans que qui quoi dont où ce cet cette ces se sa son ses leur leurs il elle
        ils elles on nous vous je tu ne pas plus ni y me te lui mon ma mes ton ta tes notre nos votre vos
        """
    ),
    "it": _words(
        """
        il lo la i gli le un uno una e ed o ma è sono era erano stato stata essere ha hanno aveva di del
        dello della dei degli delle a al allo alla ai agli alle da dal dalla dai in nel nello nella nei
        negli nelle con su sul sulla per tra fra che chi cui non più si suo sua suoi sue come dove quando
        questo questa questi queste quello quella anche
        """
    ),
    "pt": _words(
        """
        o a os as um uma uns umas e ou mas é são foi foram ser era eram está estão de do da dos das em no
        na nos nas por pelo pela pelos pelas para com sem sobre que quem como quando onde se seu sua seus
        suas ele ela eles elas não mais muito também entre até desde ao aos à às este esta isto esse essa
        isso
        """
    ),
    "nl": _words(
        """
        de het een en of maar is zijn was waren wordt worden werd werden heeft hebben had van in op aan met
        voor door over bij uit naar als dat die dit deze er niet ook nog wel zo hij zij ze wij we ik je u
        hun haar zich te om tot
        """
    ),
}

ELISIONS: dict[str, frozenset[str]] = {
    "fr": frozenset({"l", "d", "j", "m", "n", "s", "t", "c", "qu", "jusqu", "lorsqu", "puisqu", "quoiqu"}),
    "it": frozenset({"l", "d", "dell", "dall", "nell", "sull", "all", "un", "c", "quest", "quell"}),
    "ca": frozenset({"l", "d", "s", "n", "m", "t"}),
}
