package buildinfo

import (
	"os"
	"regexp"
	"testing"
)

// make build is the release build: it must use the tags the tests and
// benchmarks measure.
func TestMakeBuildUsesAgentTags(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^GOTAGS\s*:=\s*(\S+)$`).FindSubmatch(mk)
	if m == nil || string(m[1]) != AgentTags {
		t.Fatalf("Makefile: want GOTAGS := %s, got %q", AgentTags, m)
	}
	if !regexp.MustCompile(`go build -trimpath -tags '\$\(GOTAGS\)'`).Match(mk) {
		t.Error("Makefile: the build target does not pass -tags '$(GOTAGS)'")
	}
}
