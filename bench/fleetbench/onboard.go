package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// simMesh is the Istio the simulated VMs join: no istiod runs, so its
// version is the embedded charts' (what the lab's istiod would answer), and
// the sidecar's binaries are small stand-ins (a real pilot-agent and Envoy
// are 150 MB a VM: delivering them is bench-status's and agentbench's
// figure, not this one's).
type simMesh struct{ sidecar onboard.Sidecar }

func (simMesh) Revision(context.Context) string  { return "" }
func (simMesh) ClusterID(context.Context) string { return clusterID }
func (simMesh) IstiodVersion(context.Context, string) (string, string, error) {
	return istioinstall.EmbeddedVersion, "the embedded charts (no istiod in this run)", nil
}
func (simMesh) IstiodAddress(context.Context, string) (string, error) { return "127.0.0.1", nil }
func (m simMesh) Sidecar(context.Context, string, string) (onboard.Sidecar, error) {
	return m.sidecar, nil
}

// standInSidecar writes the sidecar's files: size bytes each.
func standInSidecar(dir string, size int) (onboard.Sidecar, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return onboard.Sidecar{}, err
	}
	side := onboard.Sidecar{PilotAgent: filepath.Join(dir, "pilot-agent"), Envoy: filepath.Join(dir, "envoy"), BootstrapTemplate: filepath.Join(dir, "envoy_bootstrap_tmpl.json")}
	for i, f := range []string{side.PilotAgent, side.Envoy, side.BootstrapTemplate} {
		b := make([]byte, size)
		for j := range b {
			b[j] = byte('a' + (i+j)%26)
		}
		if err := os.WriteFile(f, b, 0o755); err != nil {
			return side, err
		}
	}
	return side, nil
}

// onboardResult is one onboarding of the fleet.
type onboardResult struct {
	AllHealthy time.Duration
	// PerVM is each VM's time from the start until its pass returned Done.
	PerVM  []time.Duration
	Passes int
	Errors map[string]int
}

// onboardAll drives vmcore.Reconcile for every VM as a controller would: at
// most workers passes at once, each VM requeued when its pass says, and
// sooner when its WorkloadEntry changes (a controller watches them).
func onboardAll(ctx context.Context, names []string, addrs map[string]string, workers int, target vmcore.Target, store vmcore.Store, deps vmcore.Deps, spec workload.Spec) (onboardResult, error) {
	kick := map[string]chan struct{}{}
	byAddr := map[string]string{}
	for _, n := range names {
		kick[n] = make(chan struct{}, 1)
		byAddr[addrs[n]] = n
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if err := watchEntries(wctx, deps.Kube, spec, func(addr string) {
		if n, ok := byAddr[addr]; ok {
			select {
			case kick[n] <- struct{}{}:
			default:
			}
		}
	}); err != nil {
		return onboardResult{}, err
	}
	var (
		mu  sync.Mutex
		res = onboardResult{Errors: map[string]int{}}
		sem = make(chan struct{}, workers)
		wg  sync.WaitGroup
	)
	start := time.Now()
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
			}
			mu.Lock()
			fmt.Fprintf(os.Stderr, "fleetbench: %s: %d of %d VMs Healthy, %d passes, errors %v\n", time.Since(start).Round(time.Second), len(res.PerVM), len(names), res.Passes, res.Errors)
			mu.Unlock()
		}
	}()
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vm := vmcore.Spec{Name: n, Generation: 1, RunsApp: true, ProbePort: spec.ProbePort, AppPort: spec.Port, TokenLifetime: time.Hour}
			var st vmcore.Status
			backoff := 100 * time.Millisecond
			for {
				sem <- struct{}{}
				r, err := vmcore.Reconcile(ctx, vm, st, target, store, deps)
				<-sem
				st = r.Status
				if ctx.Err() != nil {
					return // the budget ran out: not a pass of the run
				}
				mu.Lock()
				res.Passes++
				if err != nil {
					res.Errors[fmt.Sprintf("%.120v", err)]++
				}
				mu.Unlock()
				if r.Done && st.Conditions.IsTrue(vmcore.Healthy) {
					mu.Lock()
					res.PerVM = append(res.PerVM, time.Since(start))
					mu.Unlock()
					return
				}
				wait := r.RequeueAfter
				if err != nil {
					wait, backoff = backoff, min(2*backoff, 10*time.Second)
				}
				if wait <= 0 {
					wait = time.Second
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				case <-kick[n]:
				}
			}
		}()
	}
	wg.Wait()
	res.AllHealthy = time.Since(start)
	if len(res.PerVM) != len(names) {
		return res, fmt.Errorf("%d of %d VMs Healthy when the run ended (%v); errors: %v", len(res.PerVM), len(names), ctx.Err(), res.Errors)
	}
	return res, nil
}

// watchEntries calls changed with the address of every WorkloadEntry the
// API server reports added or modified, until ctx ends.
func watchEntries(ctx context.Context, c workload.Clients, spec workload.Spec, changed func(addr string)) error {
	w, err := c.Istio.NetworkingV1().WorkloadEntries(spec.Namespace).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			if we, ok := ev.Object.(*clientnetworking.WorkloadEntry); ok {
				changed(we.Spec.GetAddress())
			}
		}
	}()
	return nil
}
