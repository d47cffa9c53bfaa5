"""Stage 5, finalize: the committed shards in, the checked data set out, the manifest last (the commit point).

`passes` runs dedup (`dedup`), the diversity (`diversity`) and bias-drift (`drift`) measures and
real-data mixing (`mixing`) over the shards; `samples` picks the example rows; `report` and
`report_tables` write the HTML quality report; `finish` writes the manifest.
"""
