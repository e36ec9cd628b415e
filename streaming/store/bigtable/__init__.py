"""Our Feast online store on Bigtable: the Feast contract (``online_store``), rows and cells
(``codec``), clients, tables and retries (``admin``), the response wire encoding
(``feast_wire``)."""
