"""Wire models of the OpenAI surface, one module per endpoint, named as OpenAI names them."""
