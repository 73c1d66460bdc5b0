"""From a patient's state to the bedside observation table: the contract's encodings and the read-outs."""
