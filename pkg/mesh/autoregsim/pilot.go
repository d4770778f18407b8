package autoregsim

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	meshconfig "istio.io/api/mesh/v1alpha1"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshvm/meshvm/pkg/envfile"
)

// Where pilot-agent reads what it tells istiod, on the VM.
const (
	ClusterEnvPath = "/var/lib/istio/envoy/cluster.env"
	MeshPath       = "/etc/istio/config/mesh"
)

// Pilot is one VM's pilot-agent as istiod's registration sees it: each
// start of the sidecar is a new pilot-agent that reads the VM's files,
// connects (istiod registers it), probes the app as the WorkloadGroup's
// probe says and reports each transition, and disconnects when the sidecar
// stops.
type Pilot struct {
	istiod *Istiod
	read   func(path string) ([]byte, error)
	host   string
	onErr  func(error)

	mu   sync.Mutex
	pid  uint32
	last *session
}

type session struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Pilot returns the pilot-agent of a VM whose files read gives (by path on
// the VM) and whose app probe goes to host (its "localhost"). onErr hears
// what a real pilot-agent would log and retry (a failed registration).
func (d *Istiod) Pilot(read func(path string) ([]byte, error), host string, onErr func(error)) *Pilot {
	if onErr == nil {
		onErr = func(error) {}
	}
	return &Pilot{istiod: d, read: read, host: host, onErr: onErr}
}

// Sidecar tells the pilot-agent's process: pid is the unit's main PID, 0
// when it stopped. A new PID is a new pilot-agent: the old one disconnects,
// the new one connects. It does not block.
func (p *Pilot) Sidecar(pid uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pid == p.pid {
		return
	}
	p.pid = pid
	prev := p.last
	if prev != nil {
		prev.cancel()
	}
	p.last = nil
	if pid == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{cancel: cancel, done: make(chan struct{})}
	p.last = s
	go func() {
		defer close(s.done)
		if prev != nil {
			<-prev.done // one connection at a time, disconnect first
		}
		p.run(ctx)
	}()
}

// Close stops the pilot-agent (it disconnects) and waits for it.
func (p *Pilot) Close() {
	p.mu.Lock()
	s := p.last
	p.mu.Unlock()
	p.Sidecar(0)
	if s != nil {
		<-s.done
	}
}

// run is one pilot-agent's life.
func (p *Pilot) run(ctx context.Context) {
	proxy, probe, err := p.config()
	if err != nil {
		p.onErr(err)
		return
	}
	connected := time.Now()
	if _, err := p.istiod.Connect(ctx, proxy, connected); err != nil {
		if ctx.Err() == nil { // not a connection cut short by its sidecar stopping
			p.onErr(err)
		}
		return
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.istiod.Disconnect(dctx, proxy, connected, time.Now()); err != nil {
			p.onErr(err)
		}
	}()
	if probe == nil {
		<-ctx.Done()
		return
	}
	p.probeLoop(ctx, proxy, probe)
}

// config reads the proxy's metadata from cluster.env and its readiness
// probe from the mesh config, as pilot-agent does at start.
func (p *Pilot) config() (Proxy, *networking.ReadinessProbe, error) {
	raw, err := p.read(ClusterEnvPath)
	if err != nil {
		return Proxy{}, nil, fmt.Errorf("pilot-agent: %w", err)
	}
	env := map[string]string{}
	if err := envfile.Parse("cluster.env", raw, env); err != nil {
		return Proxy{}, nil, fmt.Errorf("pilot-agent: %w", err)
	}
	proxy := Proxy{Namespace: env["POD_NAMESPACE"], Group: env["ISTIO_META_AUTO_REGISTER_GROUP"], IP: env["ISTIO_SVC_IP"], Network: env["ISTIO_META_NETWORK"]}
	if lj := env["ISTIO_METAJSON_LABELS"]; lj != "" {
		if err := json.Unmarshal([]byte(lj), &proxy.Labels); err != nil {
			return Proxy{}, nil, fmt.Errorf("pilot-agent: ISTIO_METAJSON_LABELS: %w", err)
		}
	}
	meshRaw, err := p.read(MeshPath)
	if err != nil {
		return Proxy{}, nil, fmt.Errorf("pilot-agent: %w", err)
	}
	mj, err := yaml.YAMLToJSON(meshRaw)
	if err != nil {
		return Proxy{}, nil, fmt.Errorf("pilot-agent: mesh config: %w", err)
	}
	mc := &meshconfig.MeshConfig{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(mj, mc); err != nil {
		return Proxy{}, nil, fmt.Errorf("pilot-agent: mesh config: %w", err)
	}
	probe := mc.GetDefaultConfig().GetReadinessProbe()
	proxy.HealthChecks = probe != nil
	return proxy, probe, nil
}

// probeLoop probes as pilot-agent's WorkloadHealthChecker does (defaults:
// period 10 s, timeout 1 s, thresholds 1) and reports transitions only.
func (p *Pilot) probeLoop(ctx context.Context, proxy Proxy, probe *networking.ReadinessProbe) {
	or := func(v, d int32) time.Duration {
		if v == 0 {
			v = d
		}
		return time.Duration(v)
	}
	period, timeout := or(probe.GetPeriodSeconds(), 10)*time.Second, or(probe.GetTimeoutSeconds(), 1)*time.Second
	successes, failures := int(or(probe.GetSuccessThreshold(), 1)), int(or(probe.GetFailureThreshold(), 1))
	check := p.prober(probe, timeout)
	if !sleep(ctx, time.Duration(probe.GetInitialDelaySeconds())*time.Second) {
		return
	}
	const undefined, healthy, unhealthy = 0, 1, 2
	last, ok, bad := undefined, 0, 0
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		err := check(ctx)
		if ctx.Err() != nil {
			return
		}
		report := func(up bool, msg string) {
			if err := p.istiod.Health(ctx, proxy, up, msg, time.Now()); err != nil && ctx.Err() == nil {
				p.onErr(err) // istiod retries 5 times then drops it (istio#29741)
			}
		}
		if err == nil {
			ok, bad = ok+1, 0
			if ok == successes && last != healthy {
				report(true, "")
				ok, last = 0, healthy
			}
		} else {
			bad, ok = bad+1, 0
			if bad == failures && last != unhealthy {
				report(false, err.Error())
				bad, last = 0, unhealthy
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Pilot) prober(probe *networking.ReadinessProbe, timeout time.Duration) func(context.Context) error {
	if tcp := probe.GetTcpSocket(); tcp != nil {
		addr := net.JoinHostPort(p.host, strconv.Itoa(int(tcp.GetPort())))
		return func(ctx context.Context) error {
			c, err := (&net.Dialer{Timeout: timeout}).DialContext(ctx, "tcp", addr)
			if err == nil {
				c.Close()
			}
			return err
		}
	}
	hg := probe.GetHttpGet()
	path := hg.GetPath()
	if path == "" {
		path = "/"
	}
	url := "http://" + net.JoinHostPort(p.host, strconv.Itoa(int(hg.GetPort()))) + path
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
