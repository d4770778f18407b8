//go:build linux

package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
)

// stepLines is a Reporter that keeps its lines.
type stepLines []string

func (s *stepLines) Step(step, vm, format string, args ...any) {
	*s = append(*s, step+" "+vm+": "+fmtLine(format, args...))
}

// driveSite is agentSite with the cluster's id, which a target snapshot asks.
type driveSite struct{ agentSite }

func (driveSite) ClusterID(context.Context) string { return "cluster1" }

func driveSession(t *testing.T, ms machine.Provider) (*session, *stepLines) {
	t.Helper()
	vm := startVM(t)
	lines := &stepLines{}
	site := driveSite{agentSite{ms: ms}}
	cfg := config.Default()
	cfg.VMs = []config.VM{{Name: "vm1"}}
	return &session{cfg: cfg, state: vm.state, site: site, spec: WorkloadSpec(cfg), p: lines,
		store: vmcore.DirStore{Dir: vm.state, VMs: []string{"vm1"}}, targets: vmcore.NewTargets(site, istioinstall.Namespace, nil)}, lines
}

// vm onboard on a VM that is not running fails at once with the advice it
// has always given, chosen from the core's reason.
func TestConvergeGivesTheMachineAdvice(t *testing.T) {
	for _, tc := range []struct {
		name string
		ms   map[string]machine.Machine
		want string
	}{
		{"absent", nil, "no VM vm1: run hostctl up (or hostctl vm add vm1) to create it"},
		{"stopped", map[string]machine.Machine{"vm1": {Name: "vm1", State: machine.Stopped}}, "VM vm1 is stopped: run hostctl vm start vm1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, lines := driveSession(t, infoOnly{m: tc.ms})
			start := time.Now()
			_, err := r.converge(testCtx(t), r.onboardSpec(config.VM{Name: "vm1"}, true, false), nil, true)
			if err == nil || err.Error() != tc.want {
				t.Errorf("got %v, want %q", err, tc.want)
			}
			if time.Since(start) > 5*time.Second || len(*lines) != 0 {
				t.Errorf("took %s with lines %q, want an immediate error and no line", time.Since(start), *lines)
			}
		})
	}
}

// Waiting ends as it always has: 30 s for an agent, 2 minutes for the
// entry after the files went out, each with the reason's words.
func TestGiveUpChoosesTheAdviceFromTheReason(t *testing.T) {
	spec := vmcore.Spec{Name: "vm1", RunsApp: true, ProbePort: 8000}
	status := func(set ...vmcore.Condition) vmcore.Status {
		st := vmcore.Status{Address: "10.0.0.7"}
		for _, c := range set {
			st.Conditions.Set(c, time.Now().Add(-time.Minute))
		}
		return st
	}
	cause := errors.New("connection refused")
	longAgo := time.Now().Add(-3 * time.Minute)
	for _, tc := range []struct {
		name   string
		spec   vmcore.Spec
		res    vmcore.Result
		synced time.Time
		want   string // "" is: keep waiting
	}{
		{"agent down for a minute", spec, vmcore.Result{Status: status(vmcore.Condition{Type: vmcore.AgentReachable, Status: vmcore.False, Reason: vmcore.AgentUnreachable}), Cause: cause}, time.Time{},
			"vm1: agent not answering after 30s: connection refused: see journalctl -u vmagent on the VM, or run hostctl up to reinstall it"},
		{"entry awaited for a second", spec, vmcore.Result{Status: status(vmcore.Condition{Type: vmcore.Registered, Status: vmcore.False, Reason: vmcore.NoEntry})}, time.Now().Add(-time.Second), ""},
		{"no entry", spec, vmcore.Result{Status: status(vmcore.Condition{Type: vmcore.Registered, Status: vmcore.False, Reason: vmcore.NoEntry})}, longAgo,
			"no WorkloadEntry for 10.0.0.7 after 2m0s: the sidecar has not reached istiod (see hostctl vm logs)"},
		{"not reconnected", spec, vmcore.Result{Status: status(vmcore.Condition{Type: vmcore.Healthy, Status: vmcore.False, Reason: vmcore.NotReconnected})}, longAgo,
			"WorkloadEntry : the restarted sidecar has not reconnected and reported health after 2m0s (see hostctl vm logs)"},
		{"not healthy", spec, vmcore.Result{Status: status(vmcore.Condition{Type: vmcore.Healthy, Status: vmcore.False, Reason: vmcore.EntryNotHealthy})}, longAgo,
			"WorkloadEntry  not Healthy after 2m0s (no health report yet): is the app listening on port 8000?"},
		{"own app not connected", vmcore.Spec{Name: "vm1"}, vmcore.Result{Status: status(vmcore.Condition{Type: vmcore.Registered, Status: vmcore.False, Reason: vmcore.NotReconnected})}, longAgo,
			"WorkloadEntry : the sidecar has not (re)connected to istiod after 2m0s (see hostctl vm logs)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := giveUp(tc.spec, tc.res, tc.synced)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			if tc.res.Cause != nil && got != "" && !errors.Is(err, cause) {
				t.Errorf("the cause is not wrapped: %v", err)
			}
		})
	}
}

func fmtLine(format string, args ...any) string {
	return strings.TrimSpace(fmt.Sprintf(format, args...))
}
