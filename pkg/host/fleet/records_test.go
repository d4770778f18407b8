package fleet

import (
	"errors"
	"os"
	"testing"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
)

// In fleet mode the VMs' records and the agent CA are the cluster's: a
// read before they were opened is refused, not served from the state
// directory (which would mint an agent CA no agent pins).
func TestFleetModeReadsNoStateDirectory(t *testing.T) {
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	on := true
	cfg.Fleet.Enabled = &on
	f := &Fleet{Config: cfg, State: state}
	if _, err := f.records(); !errors.Is(err, errRecordsUnread) {
		t.Errorf("fleet mode, records not opened: %v, want %v", err, errRecordsUnread)
	}
	if err := f.Logs(t.Context(), nil, "vm1", nil); !errors.Is(err, errRecordsUnread) {
		t.Errorf("vm logs: %v, want %v", err, errRecordsUnread)
	}
	if _, err := os.Stat(state.Path("agent-ca")); err == nil {
		t.Error("an agent CA was minted in the state directory")
	}
	f.Records = vmcore.DirStore{Dir: state, VMs: []string{"vm1"}}
	if s, err := f.records(); err != nil || s == nil {
		t.Errorf("records once opened: %v", err)
	}
	off := false
	cfg.Fleet.Enabled = &off
	if s, err := (&Fleet{Config: cfg, State: state}).records(); err != nil || s.(vmcore.DirStore).Dir != state {
		t.Errorf("without fleet mode: %v %v, want the state directory's", s, err)
	}
}
