//! The usability corpus: what restricted roles of `policies/demo.yaml` must still be able to do
//! through tokengate (counts, joins on unprotected keys, their own writes, well-formed tokens and
//! masks, clear values for app_admin, a usable session after a refusal).
