package cli

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	labsite "github.com/meshvm/meshvm/lab/site"
	labstack "github.com/meshvm/meshvm/lab/stack"
	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/credinfo"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// failoverElection is the replicas' timing in the failover test: a killed
// leader's Lease passes on in seconds.
var failoverElection = labstack.Election{Lease: 6 * time.Second, Renew: 4 * time.Second, Retry: time.Second}

// leaderKilledMidRotation is fleet mode's failover on the lab's real parts
// (joined to a lab test whose VMs are onboarded in fleet mode and Ready):
// the lab's controller run as two processes leader-elected on the Lease,
// every VM's token renewal asked for (hostctl vm renew --force), and the
// leader killed (SIGKILL) once the first VM's renewal is recorded while
// the last VM's is still to do. The last VM's agent is stopped until the
// kill, so the leader cannot have finished it: the kill falls mid-rotation
// on every run. Then the other process takes the Lease within its bound,
// every VM's token is replaced (a new one, valid, on the VM and in its
// records; the renewal recorded), no sidecar is restarted, no VM leaves
// Healthy, and every MeshVM keeps its UID. The lab's controller is put
// back as hostctl up runs it at the end.
func leaderKilledMidRotation(t *testing.T, cfgPath, state string, vms ...string) {
	start := time.Now()
	ctx := context.Background()
	clients, _, dc := labClients(t, state)
	lab := labVMs(state)
	labDir := filepath.Join(state, "lab")
	spec := workload.Spec{Namespace: "vmns", Group: "external-app"}
	sh := vmShell(t, lab)
	get := func(name string) v1alpha1.MeshVM { return getMeshVM(ctx, dc, "vmns", name) }
	stored := func(vm string) string {
		rec, err := clients.Kube.CoreV1().Secrets(fleetstore.DefaultNamespace).Get(ctx, fleetstore.RecordName("vmns", vm), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s's records: %v", vm, err)
		}
		return string(rec.Data["istio-token"])
	}
	// holder is who holds the Lease, and since when.
	holder := func() (string, time.Time) {
		l, err := clients.Kube.CoordinationV1().Leases(fleetstore.DefaultNamespace).Get(ctx, v1alpha1.ControllerLease, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil || l.Spec.AcquireTime == nil {
			return "", time.Time{}
		}
		return *l.Spec.HolderIdentity, l.Spec.AcquireTime.Time
	}
	ready := func(name string) (bool, string) {
		m := get(name)
		c := findCond(m.Status.Conditions, v1alpha1.ConditionReady)
		return c != nil && c.Status == metav1.ConditionTrue && strings.HasPrefix(m.Status.Agent, "connected"), fmt.Sprintf("agent %q, Ready %+v", m.Status.Agent, c)
	}

	// Two replicas with short leases; one leads.
	var log strings.Builder
	replicas, err := labsite.StartControllers(ctx, labDir, labstack.ControllerOptions{Replicas: 2, Election: failoverElection}, &log)
	logOutput(t, fmt.Sprintf("the lab's controller as two replicas (lease %s, renew %s, retry %s)", failoverElection.Lease, failoverElection.Renew, failoverElection.Retry), log.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, r := range replicas {
				b, _ := os.ReadFile(filepath.Join(labstack.ControllerDir(labDir), "logs", r.Name+".log"))
				t.Logf("%s's log:\n%s", r.Name, tail(string(b), 60))
			}
		}
	})
	var leader, standby labstack.Replica
	waitFor(t, 2*failoverElection.Lease+30*time.Second, "one replica leading", func() (bool, string) {
		a, b := leads(replicas[0].Metrics), leads(replicas[1].Metrics)
		switch {
		case a && !b:
			leader, standby = replicas[0], replicas[1]
		case b && !a:
			leader, standby = replicas[1], replicas[0]
		default:
			return false, fmt.Sprintf("leading: %s %v, %s %v", replicas[0].Name, a, replicas[1].Name, b)
		}
		return true, ""
	})
	oldHolder, _ := holder()
	for _, vm := range vms {
		waitFor(t, 2*time.Minute, vm+" Ready under "+leader.Name, func() (bool, string) { return ready(vm) })
	}
	t.Logf("%s (pid %d) leads, %s (pid %d) stands by; Lease held by %s", leader.Name, leader.PID, standby.Name, standby.PID, oldHolder)

	type before struct{ uid, token, pid, addr, asked string }
	was := map[string]before{}
	for _, vm := range vms {
		m := get(vm)
		b := before{uid: string(m.UID), token: stored(vm), pid: sh(vm, "systemctl show -p MainPID --value istio.service"), addr: m.Status.Address,
			asked: m.Annotations[v1alpha1.AnnotationRenew]}
		if onVM := sh(vm, "cat "+agentspec.TokenPath); onVM != b.token {
			t.Fatalf("%s: the token on the VM is not the one in its records before the rotation", vm)
		}
		was[vm] = b
	}
	// No VM leaves Healthy, sampled until the end.
	stopWatch := make(chan struct{})
	left := make(chan []string, 1)
	go func() {
		var seen []string
		for {
			for _, vm := range vms {
				if !entryHealthy(ctx, clients, spec, was[vm].addr) {
					seen = append(seen, vm+" at "+time.Now().Format(time.TimeOnly))
				}
			}
			select {
			case <-stopWatch:
				left <- seen
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()

	// The last VM's agent stopped: its renewal waits, whatever the leader does.
	last := vms[len(vms)-1]
	sh(last, "systemctl stop vmagent.service")
	waitFor(t, time.Minute, last+"'s agent seen gone by the leader", func() (bool, string) {
		m := get(last)
		return !strings.HasPrefix(m.Status.Agent, "connected"), m.Status.Agent
	})

	// Every token renewal asked for, as a person does; hostctl waits for all.
	type result struct {
		out string
		err error
	}
	renewed := make(chan result, 1)
	go func() {
		out, err := run(t, append([]string{"--config", cfgPath, "vm", "renew", "--force"}, vms...)...)
		renewed <- result{out, err}
	}()
	var request string
	asked := func(m v1alpha1.MeshVM) string { return m.Annotations[v1alpha1.AnnotationRenew] }
	waitFor(t, time.Minute, "the first VM's renewal recorded", func() (bool, string) {
		for _, vm := range vms[:len(vms)-1] {
			if m := get(vm); asked(m) != was[vm].asked && m.Status.RenewRequest == asked(m) {
				request = asked(m)
				return true, ""
			}
		}
		return false, "none yet"
	})
	if err := syscall.Kill(leader.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var done, todo []string
	for _, vm := range vms {
		if m := get(vm); m.Status.RenewRequest == request {
			done = append(done, vm)
		} else {
			todo = append(todo, vm)
		}
	}
	t.Logf("%s killed with %d of %d renewals recorded (%s), %s to do", leader.Name, len(done), len(vms), strings.Join(done, ", "), strings.Join(todo, ", "))
	if len(todo) == 0 {
		t.Fatal("every renewal was recorded before the kill: not mid-rotation")
	}
	sh(last, "systemctl start vmagent.service")

	// The other process takes the Lease: at worst a lease after the dead
	// leader's last renewal, plus two jittered retries (up to 2.2 retry
	// periods each), one to see that renewal and one to take it.
	// The figures are the Lease's acquireTime and the first poll (every
	// 100ms) that sees every renewal recorded.
	bound := failoverElection.Lease + 5*failoverElection.Retry
	var handover time.Duration
	waitFor(t, bound+30*time.Second, standby.Name+" leading", func() (bool, string) {
		h, at := holder()
		handover = at.Sub(killed)
		return h != "" && h != oldHolder && leads(standby.Metrics), "Lease held by " + h
	})
	if handover > bound {
		t.Errorf("%s took the Lease %s after the kill, past its bound %s", standby.Name, handover.Round(time.Millisecond), bound)
	}
	var allRotated time.Duration
	for deadline := time.Now().Add(2 * time.Minute); allRotated == 0; time.Sleep(100 * time.Millisecond) {
		var waiting []string
		for _, vm := range vms {
			if get(vm).Status.RenewRequest != request {
				waiting = append(waiting, vm)
			}
		}
		switch {
		case len(waiting) == 0:
			allRotated = time.Since(killed)
		case time.Now().After(deadline):
			t.Fatalf("renewals not recorded 2m after the kill: %s", strings.Join(waiting, ", "))
		}
	}
	r := <-renewed
	logOutput(t, "vm renew --force "+strings.Join(vms, " "), r.out)
	if r.err != nil || strings.Count(r.out, "token replaced by the controller") != len(vms) {
		t.Errorf("vm renew --force: %v, want every token replaced", r.err)
	}
	t.Logf("failover: %s took the Lease %s after %s's kill (bound %s); every token rotated %s after it",
		standby.Name, handover.Round(time.Millisecond), leader.Name, bound, allRotated.Round(time.Millisecond))

	asOf, err := time.Parse(time.RFC3339Nano, request)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range vms {
		waitFor(t, time.Minute, vm+" Ready under "+standby.Name, func() (bool, string) { return ready(vm) })
		m, b := get(vm), was[vm]
		if string(m.UID) != b.uid {
			t.Errorf("%s's MeshVM changed UID across the failover: %s, was %s", vm, m.UID, b.uid)
		}
		tok := stored(vm)
		info, err := credinfo.ParseToken([]byte(tok))
		switch {
		case err != nil:
			t.Errorf("%s's token: %v", vm, err)
		case tok == b.token:
			t.Errorf("%s's token was not replaced", vm)
		case info.IssuedAt.Before(asOf.Truncate(time.Second)):
			t.Errorf("%s's token was issued at %s, before the renewal asked at %s", vm, info.IssuedAt, asOf)
		}
		if onVM := sh(vm, "cat "+agentspec.TokenPath); onVM != tok {
			t.Errorf("%s: the token on the VM is not the one its records hold (the old one left: %v)", vm, onVM == b.token)
		}
		if rv, err := workload.Review(ctx, clients.Kube, []byte(tok)); err != nil || !rv.Authenticated {
			t.Errorf("%s's new token refused: %+v %v", vm, rv, err)
		}
		if m.Status.TokenRotatedAt == nil || m.Status.TokenRotatedAt.Time.Before(asOf.Truncate(time.Second)) {
			t.Errorf("%s: tokenRotatedAt %v, want at or after the renewal asked at %s", vm, m.Status.TokenRotatedAt, asOf)
		}
		if pid := sh(vm, "systemctl show -p MainPID --value istio.service"); pid != b.pid {
			t.Errorf("%s's sidecar restarted (pid %s -> %s)", vm, b.pid, pid)
		}
		// The old token is gone from the VM and its records; the API
		// server accepts it until it expires (bound to the VM's Secret,
		// as after any rotation: only vm revoke refuses it).
		if rv, err := workload.Review(ctx, clients.Kube, []byte(b.token)); err == nil {
			t.Logf("%s: old token replaced on the VM and in its records (API server accepts it until its expiry: %v)", vm, rv.Authenticated)
		}
		if m.Status.Healthy != "True" {
			t.Errorf("%s: status.healthy %q", vm, m.Status.Healthy)
		}
	}
	close(stopWatch)
	if seen := <-left; len(seen) > 0 {
		t.Errorf("VMs seen not Healthy during the failover: %s", strings.Join(seen, "; "))
	}

	// Back to what hostctl up runs: one replica, the controller's timing.
	log.Reset()
	replicas, err = labsite.StartControllers(ctx, labDir, labstack.ControllerOptions{}, &log)
	if err != nil {
		t.Fatalf("the lab's controller back to one replica: %v\n%s", err, log.String())
	}
	waitFor(t, time.Minute, replicas[0].Name+" leading again", func() (bool, string) { return leads(replicas[0].Metrics), "" })
	for _, vm := range vms {
		waitFor(t, 2*time.Minute, vm+" Ready under "+replicas[0].Name, func() (bool, string) { return ready(vm) })
	}
	t.Logf("failover case, the lab back to one replica: %s", time.Since(start).Round(time.Second))
}

// leads says whether the controller process serving metrics at addr holds
// the Lease (controller-runtime's leader_election_master_status).
func leads(addr string) bool {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "leader_election_master_status{") && strings.HasSuffix(l, " 1") {
			return true
		}
	}
	return false
}
