package vm

// Unsupported says why the lab cannot run on this machine's OS: nil on Linux.
func Unsupported() error { return nil }
