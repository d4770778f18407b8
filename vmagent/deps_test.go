package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The agent ships to every VM: keep it small and free of the workstation's
// heavy dependencies (tailscale's deptest, LXD's lxd-agent deps list).
func TestAgentDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	forbidden := []string{"k8s.io/", "istio.io/", "sigs.k8s.io/controller-runtime", "github.com/google/go-containerregistry", "golang.org/x/crypto/ssh", "github.com/meshvm/meshvm/hostctl"}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("vmagent imports %s (forbidden prefix %s): move that code to hostctl", dep, f)
			}
		}
	}
}
