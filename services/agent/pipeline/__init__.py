"""The flow pipeline: datapath records in (ingest), flows out (wire encoding, selection)."""
