// Package buildinfo holds the version stamped in at link time.
package buildinfo

import "runtime/debug"

// Version is set with -ldflags "-X github.com/meshvm/meshvm/pkg/buildinfo.Version=...".
var Version = ""

// String returns the stamped version, else the module version, else "dev".
func String() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// AgentTags are the build tags vmagent ships with (make build, the lab
// tests and the benchmarks build it so): grpcnotrace leaves out gRPC's
// golang.org/x/net/trace, whose debug pages pull in html/template: about
// 3 MiB of binary, nearly all of it resident on every VM.
const AgentTags = "grpcnotrace"
