package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/pkg/host/fleet"
)

// vm status in fleet mode leads with the MeshVM's Ready; without fleet
// mode the table is as it was.
func TestStatusTableInFleetMode(t *testing.T) {
	vms := []fleet.VMStatus{
		{Name: "a", Machine: "running", Agent: "up e2e", MeshVM: &fleet.Declared{Ready: "True"}},
		{Name: "b", Machine: "running", Agent: "up e2e", MeshVM: &fleet.Declared{Ready: "True", Paused: true}},
		{Name: "c", Machine: "running", Agent: "up e2e", MeshVM: &fleet.Declared{Ready: "False", Reason: "AgentUnreachable"}},
	}
	var b bytes.Buffer
	if err := renderStatus(&b, "table", vms); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	if f := strings.Fields(lines[0]); len(f) < 2 || f[1] != "READY" {
		t.Errorf("header %q: want READY second", lines[0])
	}
	for i, want := range []string{"True", "paused", "False (AgentUnreachable)"} {
		if !strings.Contains(lines[i+1], want) {
			t.Errorf("row %q: want %q", lines[i+1], want)
		}
	}
	b.Reset()
	for i := range vms {
		vms[i].MeshVM = nil
	}
	renderStatus(&b, "table", vms)
	if strings.Contains(b.String(), "READY") {
		t.Errorf("without fleet mode: %s", b.String())
	}
}
