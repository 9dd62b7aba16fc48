"""detox: defend image classifiers against backdoor (data-poisoning) attacks.

Three kinds of thing and one contract between them (see docs/architecture.md):

* an **attack** (:mod:`detox.attacks`) turns clean images and labels into poisoned ones;
* a **detector** (:mod:`detox.defenses.detectors`) scores every training example;
* a **purifier** (:mod:`detox.defenses.purifiers`) maps test inputs to cleaned inputs;
* the :class:`~detox.data.PoisonedSet` is the data contract between them.
"""

__version__ = "0.1.0"
