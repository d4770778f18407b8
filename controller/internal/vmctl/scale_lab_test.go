//go:build linux

package vmctl

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/mesh/autoregsim"
	"github.com/meshvm/meshvm/vmagent/agentsim"
)

// requestCounter counts the controller's API requests by HTTP method.
type requestCounter struct {
	mu     sync.Mutex
	by     map[string]int
	status map[int]int
}

// counted is one transport of the controller's clients, counted.
type counted struct {
	c    *requestCounter
	next http.RoundTripper
}

func (t counted) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	c := t.c
	c.mu.Lock()
	c.by[req.Method]++
	c.by[req.Method+" "+resourceOf(req.URL.Path)]++
	if resp != nil {
		c.status[resp.StatusCode]++
	}
	c.mu.Unlock()
	return resp, err
}

func (c *requestCounter) snapshot() (map[string]int, map[int]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	by, st := map[string]int{}, map[int]int{}
	for k, v := range c.by {
		by[k] = v
	}
	for k, v := range c.status {
		st[k] = v
	}
	return by, st
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// Figures, not a test of them: MESHVM_CTL_SCALE=N simulated VMs (the real
// agent each, over real mTLS) declared at once to the real controller on
// the lab's real API server, with MESHVM_CTL_WORKERS, MESHVM_CTL_QPS and
// MESHVM_CTL_BURST; istiod's registration stood in by autoregsim. It logs
// the time to all Ready, the controller's API requests per VM by method,
// passes per VM, and the requests over 30 s at rest. Skipped unless set.
func TestFleetScaleFigures(t *testing.T) {
	n := envInt("MESHVM_CTL_SCALE", 0)
	if n == 0 {
		t.Skip("set MESHVM_CTL_SCALE=N to measure")
	}
	count := &requestCounter{by: map[string]int{}, status: map[int]int{}}
	o := labOptions{workers: envInt("MESHVM_CTL_WORKERS", 4), qps: float32(envInt("MESHVM_CTL_QPS", 50)), burst: envInt("MESHVM_CTL_BURST", 100),
		wrap: func(rt http.RoundTripper) http.RoundTripper { return counted{c: count, next: rt} }}
	lc := startLabController(t, o)
	ctx := context.Background()

	// istiod's own client limits (pilot-discovery's --kubeClientQPS 80,
	// --kubeClientBurst 160): client-go's default 5/s would make the
	// stand-in, not the controller, what the VMs wait for.
	irc := rest.CopyConfig(lc.rc)
	irc.QPS, irc.Burst = 80, 160
	istiod := autoregsim.New(istioclient.NewForConfigOrDie(irc), autoregsim.Options{Instance: "istiod-0"})
	t.Cleanup(istiod.Close) // after the fleet's pilots
	first := netip.AddrFrom4([4]byte{127, byte(150 + rand.IntN(50)), 0, 1})
	fleet := simFleet(t, lc, istiod, agentsim.Options{N: n, First: first})
	arc := rest.CopyConfig(lc.rc)
	arc.QPS, arc.Burst = 500, 1000
	admin, err := client.New(arc, client.Options{Scheme: lc.c.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := count.snapshot()
	start := time.Now()
	for _, vm := range fleet.VMs {
		if err := admin.Create(ctx, &v1alpha1.MeshVM{ObjectMeta: metav1.ObjectMeta{Name: vm.Name, Namespace: labGroup.Namespace},
			Spec: v1alpha1.MeshVMSpec{Address: vm.Address, WorkloadGroup: labGroup.Group}}); err != nil {
			t.Fatal(err)
		}
	}
	applied := time.Since(start)
	deadline := start.Add(15 * time.Minute)
	ready := 0
	for ready < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d Ready after %s", ready, n, time.Since(start))
		}
		time.Sleep(time.Second)
		var list v1alpha1.MeshVMList
		if err := lc.c.List(ctx, &list); err != nil {
			t.Fatal(err)
		}
		ready = 0
		for _, vm := range list.Items {
			if condIs(v1alpha1.ConditionReady, metav1.ConditionTrue)(&vm) {
				ready++
			}
		}
	}
	took := time.Since(start)
	after, status := count.snapshot()
	m := lc.scrape()
	passes, _ := sum(m, `^controller_runtime_reconcile_total\{controller="meshvm"`)
	t.Logf("%d VMs, workers %d, QPS %v burst %d: applied in %s, all Ready %s after the first apply", n, o.workers, o.qps, o.burst, applied.Round(100*time.Millisecond), took.Round(100*time.Millisecond))
	t.Logf("per VM to Ready: %s; %.1f passes; HTTP statuses %v", perVM(before, after, n), passes/float64(n), status)
	t.Logf("per VM to Ready: %s", writesReads(before, after, n))

	time.Sleep(30 * time.Second)
	rest, _ := count.snapshot()
	t.Logf("30 s at rest after: %s requests in all (%s)", perVM(after, rest, 1), writesReads(after, rest, 1))
	lc.stop()
}

func perVM(before, after map[string]int, n int) string {
	var keys []string
	for k := range after {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := ""
	for _, k := range keys {
		s += fmt.Sprintf("%s %.2f ", k, float64(after[k]-before[k])/float64(n))
	}
	return s
}

// writesReads sums the requests per VM into writes (POST, PUT, PATCH,
// DELETE) and reads (GET, with LIST and WATCH).
func writesReads(before, after map[string]int, n int) string {
	var w, r int
	for _, m := range []string{"POST", "PUT", "PATCH", "DELETE"} {
		w += after[m] - before[m]
	}
	r = after["GET"] - before["GET"]
	ev := after["POST events"] - before["POST events"] + after["PATCH events"] - before["PATCH events"]
	return fmt.Sprintf("%.2f writes (%.2f of them Events), %.2f reads", float64(w)/float64(n), float64(ev)/float64(n), float64(r)/float64(n))
}

// resourceOf is a request path's resource (and subresource), without
// names: /api/v1/namespaces/vmns/secrets/x -> secrets.
func resourceOf(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	// api/v1/... or apis/group/version/...
	if len(parts) > 0 && parts[0] == "apis" && len(parts) > 2 {
		parts = parts[3:]
	} else if len(parts) > 1 {
		parts = parts[2:]
	}
	if len(parts) >= 2 && parts[0] == "namespaces" {
		parts = parts[2:]
	}
	switch len(parts) {
	case 0:
		return "namespaces"
	case 1, 2:
		return parts[0]
	}
	return parts[0] + "/" + parts[2]
}
