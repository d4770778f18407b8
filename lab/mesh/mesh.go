// Package mesh runs istiod (pilot-discovery built from source) as local
// processes, one per Istio revision, with the mesh configuration and
// environment that Istio's install rendered for the revision's Deployment.
// There is no kubelet in the lab, so no istiod pod and no gateway pod: the
// lab's east-west gateway (lab-envoy gateway) listens on 15012 of the lab
// instance's istiod address (on the host's loopback) and passes each VM's TLS through to its revision's istiod by SNI, as the
// expose-istiod VirtualServices make Envoy do.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/meshvm/meshvm/lab/instance"
	"github.com/meshvm/meshvm/lab/procs"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// Config describes one revision's istiod.
type Config struct {
	// Dir holds the lab's istiods: the default revision's working
	// directory, log and PID in it, another revision's in rev-<revision>.
	Dir string
	// Revision is the istiod's istio.io/rev; "" (or "default") is the default.
	Revision string
	// Istiod is the pilot-discovery binary; Kubeconfig the lab admin's.
	Istiod, Kubeconfig string
	// Gateway is the lab-envoy binary, run as the lab's east-west gateway.
	Gateway string
	// Mesh is the mesh configuration (the revision's istio ConfigMap's
	// mesh key) and Env the istiod container's environment, both as
	// Istio's install rendered them.
	Mesh string
	Env  map[string]string
	// ClusterID is the cluster's name in the mesh.
	ClusterID string
	// HostIPs are more host addresses VMs reach istiod on, beside the lab
	// instance's istiod address; istiod's serving certificate names them all.
	HostIPs  []string
	Progress io.Writer
}

const (
	namespace = "istio-system"
	// GatewayPort is where VMs reach every revision's istiod.
	GatewayPort = 15012
	gatewayName = "lab-gateway"
)

// ports are one istiod's listeners. Instance 0's default revision keeps
// the ports the lab always gave it; other revisions get a block of loopback
// ports by slot, and other instances' istiods ports of their own block.
type ports struct {
	grpc, secure, https, http, monitoring, ctrlz string
}

func portsOf(inst instance.Instance, slot int) ports {
	if inst.N == 0 && slot == 0 {
		return ports{grpc: ":15010", secure: "127.0.0.1:15112", https: ":15017", http: "127.0.0.1:18080",
			monitoring: "127.0.0.1:15014", ctrlz: "9876"}
	}
	at := func(p int) string { return "127.0.0.1:" + strconv.Itoa(20000+100*slot+p) }
	ctrlz := strconv.Itoa(20000 + 100*slot + 76)
	if inst.N != 0 {
		base := instance.IstiodPorts + instance.RevisionPorts*slot
		at = func(p int) string { return "127.0.0.1:" + strconv.Itoa(inst.Port(0, base+p)) }
		ctrlz = strconv.Itoa(inst.Port(0, base+5))
		return ports{grpc: at(0), secure: at(1), https: at(2), http: at(3), monitoring: at(4), ctrlz: ctrlz}
	}
	return ports{grpc: at(10), secure: at(12), https: at(17), http: at(80), monitoring: at(14), ctrlz: ctrlz}
}

// instanceOf is the lab instance of the istiods in dir (a child of the
// lab's state directory).
func instanceOf(dir string) instance.Instance { return instance.Of(filepath.Dir(dir)) }

// revDir is where a revision's istiod keeps its state.
func revDir(dir, rev string) string {
	if !workloadfiles.Revisioned(rev) {
		return dir
	}
	return filepath.Join(dir, "rev-"+rev)
}

// slot is the revision's port block: 0 for the default, else the one
// recorded when it first started (a new one: one past the highest).
func slot(dir, rev string, assign bool) (int, error) {
	if !workloadfiles.Revisioned(rev) {
		return 0, nil
	}
	file := filepath.Join(revDir(dir, rev), "slot")
	if b, err := os.ReadFile(file); err == nil {
		return strconv.Atoi(strings.TrimSpace(string(b)))
	} else if !assign {
		return 0, fmt.Errorf("the lab runs no istiod of revision %s: set istio.revision to %s and run hostctl up", rev, rev)
	}
	highest := 0
	for _, r := range Revisions(dir) {
		if n, err := slot(dir, r, false); err == nil && n > highest {
			highest = n
		}
	}
	if err := os.MkdirAll(revDir(dir, rev), 0o700); err != nil {
		return 0, err
	}
	n := highest + 1
	if instanceOf(dir).N != 0 && instance.IstiodPorts+instance.RevisionPorts*(n+1) > 200 {
		return 0, fmt.Errorf("istio.revision %s: this lab instance has ports for %d revisions, all taken: run hostctl down and up to start afresh", rev, (200-instance.IstiodPorts)/instance.RevisionPorts)
	}
	return n, os.WriteFile(file, []byte(strconv.Itoa(n)+"\n"), 0o600)
}

// Revisions are the revisions the lab has started an istiod for, the
// default ("default") first.
func Revisions(dir string) []string {
	var out []string
	if _, err := os.Stat(filepath.Join(dir, "istiod")); err == nil {
		out = append(out, "default")
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "rev-*", "slot"))
	sort.Strings(matches)
	for _, m := range matches {
		out = append(out, strings.TrimPrefix(filepath.Base(filepath.Dir(m)), "rev-"))
	}
	return out
}

// PodName is the name the revision's istiod goes by (POD_NAME): what it
// writes as istio.io/workloadController on the WorkloadEntries it registers.
func PodName(rev string) string { return istioinstall.IstiodService(rev) + "-lab" }

// Up starts the revision's istiod unless it runs as configured and answers,
// then the gateway with a route to every revision's.
func Up(ctx context.Context, c Config) error {
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if _, err := instance.Claim(filepath.Dir(c.Dir)); err != nil {
		return err
	}
	if err := startIstiod(ctx, c); err != nil {
		return err
	}
	return startGateway(ctx, c)
}

// Ready reports whether the revision's istiod answers on its HTTP port.
func Ready(ctx context.Context, dir, rev string) error {
	if _, ok := instance.Lookup(filepath.Dir(dir)); !ok {
		return fmt.Errorf("no lab in %s: run hostctl up", filepath.Dir(dir))
	}
	n, err := slot(dir, rev, false)
	if err != nil {
		return err
	}
	_, err = get(ctx, "http://"+portsOf(instanceOf(dir), n).http+"/ready")
	return err
}

// Version is the Istio version the revision's running istiod reports
// (its monitoring port's /version: version-gitrevision-status).
func Version(ctx context.Context, dir, rev string) (string, error) {
	n, err := slot(dir, rev, false)
	if err != nil {
		return "", err
	}
	b, err := get(ctx, "http://"+portsOf(instanceOf(dir), n).monitoring+"/version")
	if err != nil {
		return "", fmt.Errorf("istiod (revision %s) /version: %w", workloadfiles.RevisionName(rev), err)
	}
	return istioinstall.VersionOf(string(b)), nil
}

func get(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", url, resp.Status)
	}
	return b, err
}

// startIstiod runs pilot-discovery with a scratch working directory: it reads
// the mesh from ./etc/istio/config/mesh and keeps its files under ./var. An
// istiod started with other arguments (an older lab's) is restarted.
func startIstiod(ctx context.Context, c Config) error {
	n, err := slot(c.Dir, c.Revision, true)
	if err != nil {
		return err
	}
	dir := revDir(c.Dir, c.Revision)
	pd := procs.Dir(dir)
	const name = "pilot-discovery"
	inst := instanceOf(c.Dir)
	p := portsOf(inst, n)
	work := filepath.Join(dir, "istiod")
	hosts := append([]string{istioinstall.IstiodService(c.Revision) + "." + namespace + ".svc", "localhost", inst.IstiodIP().String()}, c.HostIPs...)
	spec := procs.Spec{
		Name: name, Bin: c.Istiod, Cwd: work,
		Args: []string{"discovery", "--kubeconfig", c.Kubeconfig, "--meshConfig", "./etc/istio/config/mesh",
			"--clusterID", c.ClusterID, "--domain", "cluster.local", "--httpAddr", p.http, "--monitoringAddr", p.monitoring,
			"--grpcAddr", p.grpc, "--secureGRPCAddr", p.secure, "--httpsAddr", p.https, "--ctrlz_port", p.ctrlz},
		Env: istiodEnv(c, hosts),
	}
	ready := func(ctx context.Context) error { return Ready(ctx, c.Dir, c.Revision) }
	same := sameSpec(dir, name, spec, c.Mesh)
	if pid, ok := pd.Running(name); ok && same && ready(ctx) == nil {
		fmt.Fprintf(c.Progress, "istio: istiod (revision %s) already running (pid %d)\n", workloadfiles.RevisionName(c.Revision), pid)
		return nil
	} else if ok {
		if err := pd.Stop(ctx, name, 10*time.Second); err != nil {
			return err
		}
	}
	meshFile := filepath.Join(work, "etc/istio/config/mesh")
	if err := os.MkdirAll(filepath.Dir(meshFile), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(meshFile, []byte(c.Mesh), 0o600); err != nil {
		return err
	}
	start := time.Now()
	pid, err := pd.Start(spec)
	if err != nil {
		return err
	}
	if err := pd.WaitReady(ctx, name, pid, 90*time.Second, ready); err != nil {
		return err
	}
	if err := recordSpec(dir, name, spec, c.Mesh); err != nil {
		return err
	}
	fmt.Fprintf(c.Progress, "istio: istiod (revision %s) ready (pid %d, %s)\n", workloadfiles.RevisionName(c.Revision), pid, time.Since(start).Round(100*time.Millisecond))
	return nil
}

func specSum(s procs.Spec, extra string) string { return s.Sum(extra) }

func sameSpec(dir, name string, s procs.Spec, extra string) bool {
	b, err := os.ReadFile(filepath.Join(dir, name+".spec"))
	return err == nil && strings.TrimSpace(string(b)) == specSum(s, extra)
}

func recordSpec(dir, name string, s procs.Spec, extra string) error {
	return os.WriteFile(filepath.Join(dir, name+".spec"), []byte(specSum(s, extra)+"\n"), 0o600)
}

// startGateway (re)starts the lab's east-west gateway when its routes
// differ from the revisions the lab runs: istiod-<rev>.istio-system.svc
// to each, and any other name to the default revision, as Istio's
// expose-istiod VirtualServices route them.
func startGateway(ctx context.Context, c Config) error {
	if c.Gateway == "" {
		return errors.New("meshlab: no gateway binary (lab-envoy)")
	}
	inst := instanceOf(c.Dir)
	listen := net.JoinHostPort(inst.IstiodIP().String(), strconv.Itoa(GatewayPort))
	if err := inst.AddIstiodIP(); err != nil {
		return err
	}
	args := []string{"gateway", "--listen", listen}
	for _, rev := range Revisions(c.Dir) {
		n, err := slot(c.Dir, rev, false)
		if err != nil {
			return err
		}
		up := portsOf(inst, n).secure
		args = append(args, "--route", istioinstall.IstiodService(rev)+"."+namespace+".svc="+up)
		if !workloadfiles.Revisioned(rev) {
			args = append(args, "--route", "*="+up)
		}
	}
	spec := procs.Spec{Name: gatewayName, Bin: c.Gateway, Args: args}
	pd := procs.Dir(c.Dir)
	if _, ok := pd.Running(gatewayName); ok && sameSpec(c.Dir, gatewayName, spec, "") {
		return nil
	} else if ok {
		if err := pd.Stop(ctx, gatewayName, 5*time.Second); err != nil {
			return err
		}
	}
	pid, err := pd.Start(spec)
	if err != nil {
		return err
	}
	// Up once it takes connections on its port.
	listening := func(ctx context.Context) error {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", listen)
		if err == nil {
			conn.Close()
		}
		return err
	}
	if err := pd.WaitReady(ctx, gatewayName, pid, 10*time.Second, listening); err != nil {
		return err
	}
	fmt.Fprintf(c.Progress, "istio: lab east-west gateway on %s (%s) routes to %s (pid %d)\n", listen, inst, strings.Join(Revisions(c.Dir), ", "), pid)
	return recordSpec(c.Dir, gatewayName, spec, "")
}

// istiodEnv is the rendered environment with what a pod would get from
// Kubernetes filled in for a process: its identity and the names its
// certificate must carry (the lab's VMs reach it by the host's addresses).
func istiodEnv(c Config, hosts []string) []string {
	env := map[string]string{}
	for k, v := range c.Env {
		env[k] = v
	}
	// A path inside the pod: the process is given --kubeconfig instead.
	delete(env, "KUBECONFIG")
	env["POD_NAMESPACE"], env["POD_NAME"] = namespace, PodName(c.Revision)
	env["ISTIOD_CUSTOM_HOST"] = strings.Join(hosts, ",")
	if env["CLUSTER_ID"] == "" {
		env["CLUSTER_ID"] = c.ClusterID
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// Down stops the gateway and every revision's istiod: the default's in dir
// (whether or not its working directory appeared), the others' in theirs.
func Down(ctx context.Context, dir string) error {
	errs := []error{procs.Dir(dir).Stop(ctx, gatewayName, 5*time.Second), procs.Dir(dir).Stop(ctx, "pilot-discovery", 10*time.Second)}
	for _, rev := range Revisions(dir) {
		if workloadfiles.Revisioned(rev) {
			errs = append(errs, procs.Dir(revDir(dir, rev)).Stop(ctx, "pilot-discovery", 10*time.Second))
		}
	}
	// Only a lab that claimed its instance: a down of one already gone, or
	// of a run with its own ports that claimed none (a benchmark's), must
	// not take instance 0's address from the lab that holds it.
	if inst, ok := instance.Recorded(filepath.Dir(dir)); ok {
		errs = append(errs, inst.RemoveIstiodIP())
	}
	return errors.Join(errs...)
}
