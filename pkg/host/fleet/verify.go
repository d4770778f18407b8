package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/traffic"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
	"github.com/meshvm/meshvm/pkg/reason"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// Verdict is one line of the report: ok, fail, or skipped (with why), and
// the cause of a failure for the CLI to advise on.
type Verdict struct {
	VM     string `json:"vm"`
	Check  string `json:"check"`
	Result Result `json:"result"`
	Detail string `json:"detail,omitempty"`
	reason.Cause
}

// Verify runs the recipe's closing checks on every VM of the config: istiod
// resolves on it, and traffic both ways where the site has a data path; a
// proxyless VM's traffic checks are its mTLS and its gRPC calls instead.
func (f *Fleet) Verify(ctx context.Context, o VerifyOptions) []Verdict {
	cfg, s := f.Config, f.Site
	store, storeErr := f.records()
	siteRev := s.Revision(ctx)
	toVM := fmt.Sprintf("mesh -> %s.%s:%d", cfg.Workload.Group, cfg.Workload.Namespace, cfg.Workload.Port)
	noTraffic := s.TrafficUncheckable()
	var out []Verdict
	add := func(v Verdict) { out = append(out, v) }
	for _, vm := range cfg.VMs {
		m, err := s.Machines().Info(ctx, vm.Name)
		if err != nil || !m.Running() || m.Address() == "" {
			add(Verdict{vm.Name, "VM running", Fail, "", reason.Because(reason.VMStopped, vm.Name)})
			continue
		}
		want, err := s.IstiodAddress(ctx, vm.Name)
		if err != nil {
			add(Verdict{VM: vm.Name, Check: "istiod resolves on the VM", Result: Fail, Detail: err.Error()})
			continue
		}
		var ac *agentclient.Client
		if err = storeErr; err == nil {
			ac, err = vmcore.DialAgent(m, store)
		}
		if err != nil {
			add(Verdict{VM: vm.Name, Check: "agent", Result: Fail, Detail: err.Error()})
			continue
		}
		add(resolves(ctx, ac, vm.Name, workloadfiles.IstiodHost(istioinstall.Namespace, vmRevision(store, vm.Name, siteRev)), want))
		if cfg.Proxyless(vm) {
			capture := captureVerdict(ctx, ac, vm.Name)
			ac.Close()
			out = append(out, f.proxylessChecks(ctx, vm, m, o)...)
			add(capture)
			continue
		}
		fromVM := Verdict{VM: vm.Name, Check: "VM -> " + meshSample, Result: Skipped, Detail: "not checked: " + noTraffic}
		if noTraffic == "" {
			fromVM = callFromVM(ctx, ac, vm.Name)
		}
		capture := captureVerdict(ctx, ac, vm.Name)
		ac.Close()
		add(fromVM)
		if noTraffic != "" {
			// Without a data path to check, a result would only pretend.
			add(Verdict{VM: vm.Name, Check: toVM, Result: Skipped, Detail: "not checked: " + noTraffic})
		}
		add(capture)
	}
	if noTraffic == "" && !allProxyless(cfg) {
		v := Verdict{VM: "mesh", Check: toVM, Result: Fail}
		if clients, err := KubeClients(s.Kubeconfig()); err != nil {
			v.Detail = err.Error()
		} else if body, err := traffic.Fetch(ctx, clients.Kube, traffic.DefaultImage,
			fmt.Sprintf("http://%s.%s:%d/", cfg.Workload.Group, cfg.Workload.Namespace, cfg.Workload.Port), 2*time.Minute); err != nil {
			v.Detail = err.Error()
		} else {
			v.Result, v.Detail = OK, firstLine(body)
		}
		add(v)
	}
	return out
}

// meshSample is the recipe's mesh service, Istio's helloworld sample.
const meshSample = "helloworld.sample:5000/hello"

// resolves checks that name resolves on the VM to want.
func resolves(ctx context.Context, ac *agentclient.Client, vm, name, want string) Verdict {
	v := Verdict{VM: vm, Check: "istiod resolves on the VM", Result: Fail}
	r, err := ac.ResolveDNS(ctx, &agentv1.ResolveDNSRequest{Name: name})
	switch {
	case err != nil:
		v.Detail = err.Error()
	case r.GetError() != "":
		v.Detail = r.GetError()
	case len(r.GetAddresses()) > 0 && r.GetAddresses()[0] == want:
		v.Result, v.Detail = OK, fmt.Sprintf("%s -> %s via %s", name, want, r.GetServer())
	default:
		v.Detail = fmt.Sprintf("%s -> %s, want %s", name, strings.Join(r.GetAddresses(), ","), want)
		v.Cause = reason.Because(reason.HostsBlockStale, vm)
	}
	return v
}

// callFromVM has the VM's agent call the mesh sample through the sidecar.
func callFromVM(ctx context.Context, ac *agentclient.Client, vm string) Verdict {
	v := Verdict{VM: vm, Check: "VM -> " + meshSample, Result: Fail}
	r, err := ac.CallService(ctx, &agentv1.CallServiceRequest{Host: "helloworld.sample", Port: 5000, Path: "/hello"})
	switch {
	case errors.Is(err, agenterr.Unimplemented):
		v.Detail = err.Error() + ": the agent is older than this hostctl"
		v.Cause = reason.Because(reason.AgentOutdatedRPC, vm)
	case err != nil:
		v.Detail = err.Error()
	case !r.GetOk():
		v.Detail = r.GetError() + ": is Istio's helloworld sample deployed in namespace sample, with injection on?"
	default:
		v.Result, v.Detail = OK, firstLine(r.GetBody())
	}
	return v
}

// captureVerdict is the agent's verdict on the VM's capture rules: ok
// means the kernel's rules send the app's traffic to the proxy's ports and
// leave the agent's and the proxy's own alone, and Istio's validator passed.
func captureVerdict(ctx context.Context, ac *agentclient.Client, vm string) Verdict {
	v := Verdict{VM: vm, Check: "capture rules", Result: Fail}
	st, err := ac.Status(ctx)
	if err != nil {
		v.Detail = err.Error()
		return v
	}
	c := captureOf(st.GetCapture())
	switch {
	case c == nil:
		v.Result, v.Detail = Skipped, "not checked: the agent is older than this hostctl"
		v.Cause = reason.Because(reason.AgentOutdatedRPC, vm)
	case c.State == CaptureFail:
		v.Detail, v.Cause = c.Detail+": "+c.Fix, captureCause(c, vm)
	case c.State == CaptureOK:
		v.Result, v.Detail = OK, c.Detail
	case c.notApplicable():
		v.Result, v.Detail = Skipped, c.Detail
	default:
		v.Result, v.Detail = Skipped, "not checked: "+c.Detail
	}
	return v
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

// allProxyless says no VM has Envoy: the recipe's HTTP curl to the
// workload does not apply to their gRPC apps.
func allProxyless(cfg config.Config) bool {
	for _, vm := range cfg.VMs {
		if !cfg.Proxyless(vm) {
			return false
		}
	}
	return true
}
