"""Our Feast online store on Bigtable (``online_store``) and its wire encodings."""
