package fleet

import (
	"context"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/credcheck"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/reason"
)

// infoOnly is a machine provider that only reports machines.
type infoOnly struct {
	machine.Provider
	m map[string]machine.Machine
}

func (p infoOnly) Info(_ context.Context, name string) (machine.Machine, error) {
	if m, ok := p.m[name]; ok {
		return m, nil
	}
	return machine.Machine{}, machine.ErrNotFound
}

// A stopped Multipass instance reports no address; status says how to
// start it instead of failing, and so does a machine that is gone.
func TestStatusOfMachinesNotRunning(t *testing.T) {
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := infoOnly{m: map[string]machine.Machine{"vm1": {Name: "vm1", State: "Stopped"}}}
	s := vmStatus(context.Background(), config.Default(), vmcore.DirStore{Dir: state}, p, nil, nil, nil, false, config.VM{Name: "vm1"}, "")
	if s.OK || s.Machine != "stopped" || s.Address != "" || s.Next != "" || s.Reason != reason.VMStopped || s.Args[0] != "vm1" {
		t.Errorf("stopped: got %+v", s)
	}
	s = vmStatus(context.Background(), config.Default(), vmcore.DirStore{Dir: state}, p, nil, nil, nil, false, config.VM{Name: "vm2"}, "")
	if s.OK || s.Machine != "absent" || s.Reason != reason.VMAbsent {
		t.Errorf("absent: got %+v", s)
	}
}

// A VM that runs its own app is not Healthy until that app answers: status
// says so instead of asking whether hostctl's app answers.
func TestStatusOfAVMWithItsOwnApp(t *testing.T) {
	cfg := config.Default()
	off := false
	own := config.VM{Name: "own", App: &off}
	registered := VMStatus{WorkloadEntry: "external-app-10.0.0.2", Healthy: "False", HealthMessage: "connection refused"}
	tests := []struct {
		name string
		vm   config.VM
		s    VMStatus
		ok   bool
		want string
	}{
		{"hostctl's app down", cfg.VMs[0], registered, false, "(connection refused): is the app answering on port 8000?"},
		{"own app down", own, registered, false, "WorkloadEntry not Healthy (connection refused)"},
		{"own app up", own, VMStatus{WorkloadEntry: "e", Healthy: "True"}, true, ""},
		{"own app, not registered", own, VMStatus{}, false, "no WorkloadEntry: the sidecar has not reached istiod"},
		{"proxyless, no app connected", config.VM{Name: "px", App: &off, Sidecar: config.SidecarProxyless}, VMStatus{}, false,
			"a proxyless VM registers only while its gRPC app holds pilot-agent's xDS connection"},
		{"Healthy but disconnected", own, VMStatus{WorkloadEntry: "e", Healthy: "True", Disconnected: "2026-12-02T10:00:00.000Z"}, false,
			"istiod saw its proxy disconnect at 2026-12-02T10:00:00.000Z, so that is stale"},
		{"Healthy, token revoked", cfg.VMs[0], VMStatus{WorkloadEntry: "e", Healthy: "True",
			credentialsVerdict: credcheck.Verdict{State: credcheck.Revoked, Fail: true, Detail: "revoked: ...", Cause: reason.Because(reason.CredentialsRevoked, "vm1")}}, false,
			"credentials revoked: revoked: ..."},
		{"Healthy, certificate expired", cfg.VMs[0], VMStatus{WorkloadEntry: "e", Healthy: "True",
			credentialsVerdict: credcheck.Verdict{State: credcheck.CertExpired, Detail: "the certificate expired at", Cause: reason.Because(reason.CredentialsRenewing, "vm1")}}, false,
			"credentials certificate-expired"},
		{"Healthy, token to rotate", cfg.VMs[0], VMStatus{WorkloadEntry: "e", Healthy: "True",
			credentialsVerdict: credcheck.Verdict{State: credcheck.Rotate, Detail: "past half", Cause: reason.Because(reason.CredentialsTokenAging, "vm1")}}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, next, _ := judge(cfg, tt.vm, tt.s, "active")
			if ok != tt.ok || !strings.Contains(next, tt.want) || (tt.want == "" && next != "") {
				t.Errorf("got %v %q, want %v %q", ok, next, tt.ok, tt.want)
			}
		})
	}
}

// A stopped Multipass instance has no address: its WorkloadEntry is found at
// the one it was onboarded with (vm rm deletes it there, vm start waits for
// a new one).
func TestEntryAddressOfAStoppedMachine(t *testing.T) {
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stopped := machine.Machine{Name: "vm1", State: "Stopped"}
	if got := entryAddress(state, stopped); got != "" {
		t.Errorf("never onboarded: got %q, want none", got)
	}
	if err := state.WriteSecret(addressFile("vm1"), []byte("192.168.64.7")); err != nil {
		t.Fatal(err)
	}
	if got := entryAddress(state, stopped); got != "192.168.64.7" {
		t.Errorf("onboarded at 192.168.64.7: got %q", got)
	}
	running := machine.Machine{Name: "vm1", State: "Running", Addresses: []string{"192.168.64.9"}}
	if got := entryAddress(state, running); got != "192.168.64.9" {
		t.Errorf("running: got %q, want its own address", got)
	}
}
