"""Data readers every benchmark family may use: BIG-bench task files (:mod:`kasa.data.bigbench`), local or hub
record files (:mod:`kasa.data.files`) and seeded, order-independent splits (:mod:`kasa.data.splits`). A family's
own sources live in its folder under :mod:`kasa.tasks`."""
