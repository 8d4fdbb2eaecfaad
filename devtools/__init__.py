"""Development tooling: local servers, the test and bench harness, `memctl services` and
`memctl run`. Lives in the checkout only; the wheel does not ship it."""
