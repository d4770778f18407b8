package machinesim

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/pkg/machine"
)

func TestMachinesAreTheFleets(t *testing.T) {
	ctx := context.Background()
	p := New(map[string]string{"vm0000": "127.1.0.1"})
	m, err := p.Info(ctx, "vm0000")
	if err != nil || !m.Running() || m.Address() != "127.1.0.1" || m.Arch == "" {
		t.Fatalf("info: %+v %v", m, err)
	}
	if l, err := p.Launch(ctx, machine.Spec{Name: "vm0000"}); err != nil || l.Address() != m.Address() {
		t.Errorf("launch of a fleet VM: %+v %v, want it found running", l, err)
	}
	if _, err := p.Launch(ctx, machine.Spec{Name: "new"}); !errors.Is(err, machine.ErrNotFound) {
		t.Errorf("launch of another: %v, want ErrNotFound: nothing is created", err)
	}
	if _, err := p.Exec(ctx, "vm0000", nil, "true"); err == nil || !strings.Contains(err.Error(), "without provisioning") {
		t.Errorf("exec: %v", err)
	}
	if err := p.Delete(ctx, "vm0000"); err == nil {
		t.Error("delete: want an error, the harness owns the VMs")
	}
	if err := p.SetState("vm0000", machine.Stopped); err != nil {
		t.Fatal(err)
	}
	if m, _ := p.Info(ctx, "vm0000"); m.Running() {
		t.Errorf("after SetState: %+v", m)
	}
	if p.Infos() != 4 {
		t.Errorf("infos %d, want 4", p.Infos())
	}
}
