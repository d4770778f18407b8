//go:build linux

package agentsim

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/mtls"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

func startFleet(t *testing.T, n int, onSidecar func(*VM, Unit)) (*Fleet, *mtls.CA) {
	t.Helper()
	ca, err := mtls.NewCA("agentsim test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Start(Options{N: n, Dir: t.TempDir(), First: netip.MustParseAddr("127.3.0.254"), AppPort: 8000, OnSidecar: onSidecar,
		Identity: func(name, addr string) ([]byte, []byte, []byte, error) {
			c, k, err := ca.IssueServer(name, nil, []net.IP{net.ParseIP(addr)}, time.Hour)
			return c, k, ca.CertPEM(), err
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f, ca
}

func dial(t *testing.T, ca *mtls.CA, vm *VM) *agentclient.Client {
	t.Helper()
	cfg, err := ClientTLS(ca, vm)
	if err != nil {
		t.Fatal(err)
	}
	c, err := agentclient.Dial(net.JoinHostPort(vm.Address, "7443"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Each VM is a real agent at its own address on the agent's port, skipping
// .255 and .0; its unit is not found until the agent's postinst writes it,
// then moves as systemd moves it.
func TestFleetAgentsAndTheirUnits(t *testing.T) {
	var mu sync.Mutex
	var changes []string
	f, ca := startFleet(t, 3, func(vm *VM, u Unit) {
		mu.Lock()
		changes = append(changes, vm.Name+":"+u.ActiveState)
		mu.Unlock()
	})
	if got := []string{f.VMs[0].Address, f.VMs[1].Address, f.VMs[2].Address}; got[0] != "127.3.0.254" || got[1] != "127.3.1.1" || got[2] != "127.3.1.2" {
		t.Fatalf("addresses %v", got)
	}
	ctx := context.Background()
	c := dial(t, ca, f.VMs[1])
	v, err := c.Version(ctx)
	if err != nil || !strings.Contains(strings.Join(v.GetCapabilities(), " "), "watch.v1") {
		t.Fatalf("version %v %v", v, err)
	}
	if _, err := c.Sidecar(ctx, agentv1.SidecarAction_SIDECAR_ACTION_START); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("start before install: got %v, want the unit not found", err)
	}
	if _, err := c.Install(ctx, &agentv1.InstallRequest{}); err != nil {
		t.Fatal(err)
	}
	st, err := c.Sidecar(ctx, agentv1.SidecarAction_SIDECAR_ACTION_START)
	if err != nil || st.GetActiveState() != "active" || st.GetSubState() != "running" || st.GetMainPid() == 0 || st.GetUnitFileState() != "enabled" || st.GetActiveSince() == nil {
		t.Fatalf("after start: %v %v", st, err)
	}
	pid := st.GetMainPid()
	if u, _ := f.VMs[1].CrashSidecar(); u.Restarts != 1 || u.MainPID == pid || !u.Active() {
		t.Errorf("after a crash: %+v, want a new pid and one restart", u)
	}
	st, _ = c.Sidecar(ctx, agentv1.SidecarAction_SIDECAR_ACTION_RESTART)
	if st.GetRestarts() != 0 {
		t.Errorf("a restart by hand keeps NRestarts %d, want it reset", st.GetRestarts())
	}
	if u, _ := f.VMs[1].StopSidecar(); u.ActiveState != "inactive" || u.SubState != "dead" || u.MainPID != 0 || !u.ActiveSince.IsZero() {
		t.Errorf("after stop: %+v", u)
	}
	st, _ = c.SidecarState(ctx)
	if st.GetActiveState() != "inactive" {
		t.Errorf("the agent reports %v after the harness stopped it", st)
	}
	mu.Lock()
	want := "vm0001:active vm0001:active vm0001:active vm0001:inactive"
	if got := strings.Join(changes, " "); got != want {
		t.Errorf("changes heard: %q, want %q", got, want)
	}
	mu.Unlock()
	if err := c.SidecarLogs(ctx, &agentv1.SidecarLogsRequest{}, func([]*agentv1.LogLine) error { return nil }); err == nil {
		t.Error("logs of a simulated VM: want an error saying there are none")
	}
}

// Watch reports the VM's own address, the harness's sidecar stop and the
// app going down through the agent's own probe.
func TestWatchSeesTheHarness(t *testing.T) {
	f, ca := startFleet(t, 1, nil)
	vm := f.VMs[0]
	c := dial(t, ca, vm)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Install(ctx, &agentv1.InstallRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.StartSidecar(); err != nil {
		t.Fatal(err)
	}
	stage := 0
	done := errors.New("done")
	err := c.Watch(ctx, &agentv1.WatchRequest{AppProbe: &agentv1.ProbeRequest{Kind: agentv1.ProbeKind_PROBE_KIND_HTTP, Host: vm.Address, Port: 8000, Path: "/"}},
		func(st *agentv1.WatchResponse) error {
			switch stage {
			case 0:
				if len(st.GetAddresses()) != 1 || st.GetAddresses()[0] != vm.Address || st.GetSidecar().GetActiveState() != "active" || !st.GetApp().GetOk() {
					t.Fatalf("first state: %v", st)
				}
				vm.StopSidecar()
			case 1:
				if st.GetSidecar().GetActiveState() != "inactive" {
					t.Fatalf("after the stop: %v", st)
				}
				vm.StopApp()
			default:
				if st.GetApp().GetOk() {
					return nil
				}
				return done
			}
			stage++
			return nil
		})
	if !errors.Is(err, done) {
		t.Fatalf("watch ended with %v at stage %d", err, stage)
	}
}

// Files are read as the VM sees them: its links resolve in its root.
func TestReadFileInsideTheRoot(t *testing.T) {
	f, ca := startFleet(t, 1, nil)
	vm := f.VMs[0]
	c := dial(t, ca, vm)
	ctx := context.Background()
	if _, err := c.Install(ctx, &agentv1.InstallRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutFiles(ctx, []agentclient.File{agentclient.BytesFile("/etc/istio/config/mesh", []byte("defaultConfig: {}\n"))}); err != nil {
		t.Fatal(err)
	}
	if b, err := vm.ReadFile("/etc/istio/config/mesh"); err != nil || string(b) != "defaultConfig: {}\n" {
		t.Errorf("mesh through the VM's /etc/istio link: %q %v", b, err)
	}
}

// A broken sidecar keeps running until stopped; then every start fails as
// systemd's job does, and the unit is left failed.
func TestBrokenSidecarDoesNotStart(t *testing.T) {
	f, ca := startFleet(t, 1, nil)
	vm := f.VMs[0]
	c := dial(t, ca, vm)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Install(ctx, &agentv1.InstallRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.StartSidecar(); err != nil {
		t.Fatal(err)
	}
	vm.BreakSidecar()
	if u := vm.Sidecar(); !u.Active() {
		t.Fatalf("broken while running: %+v, want it still active", u)
	}
	vm.StopSidecar()
	if _, err := c.Sidecar(ctx, agentv1.SidecarAction_SIDECAR_ACTION_START); err == nil || !strings.Contains(err.Error(), "control process exited with error code") {
		t.Errorf("start of a broken sidecar: %v, want systemd's job failure", err)
	}
	if u := vm.Sidecar(); u.ActiveState != "failed" || u.Result != "exit-code" || u.MainPID != 0 {
		t.Errorf("after the failed start: %+v", u)
	}
}
