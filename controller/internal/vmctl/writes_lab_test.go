//go:build linux

package vmctl

import (
	"context"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/fleetmode"
	"github.com/meshvm/meshvm/pkg/mesh/autoregsim"
	"github.com/meshvm/meshvm/vmagent/agentsim"
)

// One onboarding's API writes, counted on the controller's own clients
// at the lab's real API server, one VM at a time, the leader election's
// lease renewals aside: a MeshVM as meshvm's up declares it (the finalizer
// in it) takes the token's Secret, the TokenRequest, one record write and
// one status write; one applied without the finalizer (kubectl) takes the
// finalizer's write besides. No Event, no TokenReview, no second record
// or status write: those crept in before, at 9 writes a VM.
func TestOnboardingWrites(t *testing.T) {
	count := &requestCounter{by: map[string]int{}, status: map[int]int{}}
	lc := startLabController(t, labOptions{wrap: func(rt http.RoundTripper) http.RoundTripper { return counted{c: count, next: rt} }})
	ctx := context.Background()
	// The MeshVMs are created by a client of their own, not counted.
	admin, err := client.New(lc.rc, client.Options{Scheme: lc.c.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	// The controller's own client identity, made once per fleet on its
	// first call to an agent: made here, so no VM's count holds it.
	if _, err := lc.store.AgentTLS("warm-up"); err != nil {
		t.Fatal(err)
	}
	istiod := autoregsim.New(lc.istio, autoregsim.Options{Instance: "istiod-0"})
	t.Cleanup(istiod.Close) // after the fleet's pilots
	// The controller's own start (its Lease taken, the LeaderElection
	// Event about it) is not a VM's onboarding: counted before the first.
	waitLeader(t, lc)
	requestsSettled(count)
	names := []string{"declared", "applied"}
	fleet := simFleet(t, lc, istiod, agentsim.Options{N: len(names), First: netip.MustParseAddr(freeLoopback(t)), Name: func(i int) string { return names[i] }})

	for i, vm := range fleet.VMs {
		m := fleetmode.MeshVM(fleetmode.VM{Name: vm.Name, RunsApp: true}, labGroup, vm.Address, "", 0, 0)
		want := 4
		if names[i] == "applied" {
			m.Finalizers, want = nil, 5
		}
		before, _ := count.snapshot()
		start := time.Now()
		if err := admin.Create(ctx, m); err != nil {
			t.Fatal(err)
		}
		lc.wait(vm.Name, "Ready", 2*time.Minute, condIs(v1alpha1.ConditionReady, metav1.ConditionTrue))
		ready := time.Since(start)
		// Events go out behind the pass: count once the requests stop.
		after := requestsSettled(count)
		writes, by := 0, []string{}
		for k, v := range after {
			method, resource, ok := strings.Cut(k, " ")
			if !ok || resource == "leases" || method == "GET" || v == before[k] {
				continue
			}
			writes += v - before[k]
			by = append(by, k)
		}
		t.Logf("%s: Ready in %s, %d writes: %s", vm.Name, ready.Round(time.Millisecond), writes, perVM(before, only(after, by), 1))
		if writes > want {
			t.Errorf("%s: %d API writes to onboard, want at most %d", vm.Name, writes, want)
		}
		for _, k := range []string{"POST events", "POST tokenreviews", "PUT meshvms"} {
			if n := after[k] - before[k]; n > 0 && !(k == "PUT meshvms" && names[i] == "applied") {
				t.Errorf("%s: %d %s", vm.Name, n, k)
			}
		}
		if n := after["POST events"] - before["POST events"]; n > 0 {
			evs, _ := lc.kube.EventsV1().Events("").List(ctx, metav1.ListOptions{})
			for _, e := range evs.Items {
				t.Logf("Event on %s %s/%s: %s %s: %s", e.Regarding.Kind, e.Regarding.Namespace, e.Regarding.Name, e.Type, e.Reason, e.Note)
			}
		}
	}
	lc.stop()
}

// waitLeader waits until a controller holds the fleet's Lease.
func waitLeader(t *testing.T, lc *labController) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		h, err := holderOf(lc.kube, fleetstore.DefaultNamespace)
		if h != "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no controller holds the Lease after a minute: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// simFleet starts simulated VMs (the real agent each) whose agents
// present identities from lc's store, with the sidecar unit installed as
// hostctl's agent install leaves it; each sidecar started is registered by
// istiod's stand-in. They stop with the test.
func simFleet(t *testing.T, lc *labController, istiod *autoregsim.Istiod, o agentsim.Options) *agentsim.Fleet {
	t.Helper()
	var mu sync.Mutex
	pilots := map[string]*autoregsim.Pilot{}
	o.Dir, o.AppPort = t.TempDir(), labGroup.Port
	o.Identity = func(name, addr string) ([]byte, []byte, []byte, error) {
		id, err := lc.store.AgentIdentity(name, []string{addr})
		return id.Cert, id.Key, id.ClientCA, err
	}
	o.OnSidecar = func(vm *agentsim.VM, u agentsim.Unit) {
		mu.Lock()
		p, ok := pilots[vm.Name]
		if !ok {
			p = istiod.Pilot(vm.ReadFile, vm.Address, nil)
			pilots[vm.Name] = p
		}
		mu.Unlock()
		p.Sidecar(u.MainPID)
	}
	fleet, err := agentsim.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		fleet.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, p := range pilots {
			p.Close()
		}
	})
	for _, vm := range fleet.VMs {
		unit := filepath.Join(vm.Root, "etc/systemd/system/istio.service")
		if err := os.MkdirAll(filepath.Dir(unit), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(unit, []byte("[Service]\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return fleet
}

// requestsSettled is the counter once it has not moved for two seconds, the
// leader election's lease renewals aside.
func requestsSettled(c *requestCounter) map[string]int {
	last, _ := c.snapshot()
	for {
		time.Sleep(2 * time.Second)
		now, _ := c.snapshot()
		moved := false
		for k, v := range now {
			moved = moved || (v != last[k] && !strings.Contains(k, "leases") && strings.Contains(k, " "))
		}
		if !moved {
			return now
		}
		last = now
	}
}

func only(m map[string]int, keys []string) map[string]int {
	out := map[string]int{}
	for _, k := range keys {
		out[k] = m[k]
	}
	return out
}
