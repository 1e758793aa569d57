"""Tables, the database engine, and repositories that read and write them."""
