// Package meshlab runs istiod (pilot-discovery built from source) as a local
// process, with the mesh configuration and environment that Istio's install
// rendered for its Deployment. There is no kubelet in the lab, so no istiod
// pod and no gateways: VMs reach istiod directly on the host's address (the
// single-network VM case).
package meshlab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/meshvm/meshvm/pkg/procs"
)

// Config describes the lab's istiod.
type Config struct {
	// Dir holds istiod's working directory, log and PID.
	Dir string
	// Istiod is the pilot-discovery binary; Kubeconfig the lab admin's.
	Istiod, Kubeconfig string
	// Mesh is the mesh configuration (the istio ConfigMap's mesh key) and
	// Env the istiod container's environment, both as Istio's install
	// rendered them.
	Mesh string
	Env  map[string]string
	// ClusterID is the cluster's name in the mesh.
	ClusterID string
	// HostIPs are the host addresses VMs reach istiod on; istiod's serving
	// certificate names them.
	HostIPs  []string
	Progress io.Writer
}

const (
	namespace = "istio-system"
	httpAddr  = "127.0.0.1:18080"
)

// Up starts istiod unless it runs and answers.
func Up(ctx context.Context, c Config) error {
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	return startIstiod(ctx, c)
}

// Ready reports whether the lab's istiod answers on its HTTP port.
func Ready(ctx context.Context) error { return istiodReady(ctx) }

func istiodReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/ready", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/ready: %s", resp.Status)
	}
	return nil
}

// startIstiod runs pilot-discovery with a scratch working directory: it reads
// the mesh from ./etc/istio/config/mesh and keeps its files under ./var.
func startIstiod(ctx context.Context, c Config) error {
	pd := procs.Dir(c.Dir)
	const name = "pilot-discovery"
	if pid, ok := pd.Running(name); ok && istiodReady(ctx) == nil {
		fmt.Fprintf(c.Progress, "istio: istiod already running (pid %d)\n", pid)
		return nil
	}
	work := filepath.Join(c.Dir, "istiod")
	meshFile := filepath.Join(work, "etc/istio/config/mesh")
	if err := os.MkdirAll(filepath.Dir(meshFile), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(meshFile, []byte(c.Mesh), 0o600); err != nil {
		return err
	}
	hosts := append([]string{"istiod." + namespace + ".svc", "localhost"}, c.HostIPs...)
	start := time.Now()
	pid, err := pd.Start(procs.Spec{
		Name: name, Bin: c.Istiod, Cwd: work,
		Args: []string{"discovery", "--kubeconfig", c.Kubeconfig, "--meshConfig", "./etc/istio/config/mesh",
			"--clusterID", c.ClusterID, "--domain", "cluster.local", "--httpAddr", httpAddr, "--monitoringAddr", "127.0.0.1:15014"},
		Env: istiodEnv(c, hosts),
	})
	if err != nil {
		return err
	}
	if err := pd.WaitReady(ctx, name, pid, 90*time.Second, istiodReady); err != nil {
		return err
	}
	fmt.Fprintf(c.Progress, "istio: istiod ready (pid %d, %s)\n", pid, time.Since(start).Round(100*time.Millisecond))
	return nil
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
	env["POD_NAMESPACE"], env["POD_NAME"] = namespace, "istiod-lab"
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

// Down stops istiod.
func Down(ctx context.Context, dir string) error {
	return procs.Dir(dir).Stop(ctx, "pilot-discovery", 10*time.Second)
}
