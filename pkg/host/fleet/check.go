package fleet

// Result is a check's outcome, as doctor and verify report it.
type Result string

const (
	OK   Result = "ok"
	Warn Result = "warn"
	Fail Result = "fail"
	// Skipped: not checked here; the detail says why.
	Skipped Result = "skipped"
)
