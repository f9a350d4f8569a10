"""Sample compression schemes on finite concept classes.

Modules:

- ``classes``: concept classes on a finite domain as bit vectors; VC dimension, (strongly) shattered
  sets, Sauer-Shelah bound, maximum / ample / maximal tests, restriction, reduction, tail, one-inclusion
  graph; reading class files.
- ``symmetry``: the hyperoctahedral group (coordinate permutations and bit flips) acting on classes;
  canonical forms and stabilisers.
- ``enumeration``: all maximum classes of VC dimension d on n points by lifting from n - 1 points,
  counts (total and up to symmetry), brute force for tiny n.
- ``schemes``: scheme objects (labeled / unlabeled, proper / improper) and constructions (Floyd-Warmuth,
  representation maps, min-peeling, corner peeling), their records on disk.
- ``sat``: SAT encodings (python-sat) for representation maps and for the existence of schemes of size
  k; an exhaustive brute-force search to cross-check them.
- ``verify``: exhaustive verification of a scheme over every sample of every concept.
- ``compactness``: the finite skeleton of the Ben-David-Litman compactness argument.
- ``named``: the literal classes of the literature (Warmuth's class, Kuzmin-Warmuth's examples, cubes).
- ``pipeline`` and ``tables``: what the Snakemake rules run; ``cli``: ``repro compression ...``.

Conventions: the domain is X = {x_1, ..., x_n}; a concept is an int whose bit i is its label on x_{i+1};
a subset of X is an int mask over n bits; a sample is a pair (S, labels) of masks with labels inside S.
"""


class CompressionInputError(ValueError):
    """Bad input from a user (malformed class file, impossible parameters); the message says where."""
