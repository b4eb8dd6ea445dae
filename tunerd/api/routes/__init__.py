"""Thin routers: validate (pydantic), authorize (deps), call crud, shape the answer."""
