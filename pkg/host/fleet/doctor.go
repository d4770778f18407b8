package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshvm/meshvm/pkg/buildinfo"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/credcheck"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
	"github.com/meshvm/meshvm/pkg/reason"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// Finding is one check's verdict: ok, warn or fail, with the fix: Fix is
// what to do that names no hostctl command (the agent's, or outside
// meshvm), the cause what the CLI words its advice from (after Fix).
type Finding struct {
	Scope  string `json:"scope"`
	Check  string `json:"check"`
	Result Result `json:"result"`
	Detail string `json:"detail,omitempty"`
	Fix    string `json:"fix,omitempty"`
	reason.Cause
}

// finding is a Finding whose fix is the advice on cause alone.
func finding(scope, check string, r Result, detail string, cause reason.Cause) Finding {
	return Finding{Scope: scope, Check: check, Result: r, Detail: detail, Cause: cause}
}

// Doctor runs every check of the cluster and of each VM of the config,
// changing nothing.
func (f *Fleet) Doctor(ctx context.Context) []Finding {
	cfg, s := f.Config, f.Site
	store, storeErr := f.records()
	var out []Finding
	add := func(x Finding) { out = append(out, x) }
	clients, err := KubeClients(s.Kubeconfig())
	if err == nil {
		_, err = clients.Kube.Discovery().ServerVersion()
	}
	if err != nil {
		add(finding("cluster", "API server", Fail, err.Error(), reason.Because(reason.ClusterDown)))
	} else {
		add(finding("cluster", "API server", OK, "answering", reason.Cause{}))
		out = append(out, clusterChecks(ctx, s, s.Revision(ctx), clients)...)
	}
	// The VMs' credential Secrets, listed once: a token whose Secret is gone is revoked.
	var bindings map[string]string
	var bindErr error = errors.New("no API server")
	if clients.Kube != nil {
		bindings, bindErr = workload.CredentialUIDs(ctx, clients.Kube, cfg.Workload.Namespace)
	}
	for _, vm := range cfg.VMs {
		if storeErr != nil {
			out = append(out, finding(vm.Name, "agent", Fail, "not reached: "+storeErr.Error(), reason.Cause{}))
			continue
		}
		out = append(out, vmChecks(ctx, cfg, store, s.Machines(), s, vm.Name, bindings, bindErr == nil)...)
	}
	return out
}

// clusterChecks checks istiod of revision rev and the east-west ports.
func clusterChecks(ctx context.Context, s MeshStatus, rev string, clients workload.Clients) []Finding {
	var out []Finding
	if detail, err := s.IstiodReady(ctx, rev); err != nil {
		out = append(out, finding("cluster", "istiod", Fail, err.Error(), reason.Because(reason.IstiodNotInstalled)))
	} else {
		out = append(out, finding("cluster", "istiod", OK, detail, reason.Cause{}))
	}
	if yours := s.JoinedIstio(ctx); yours != "" {
		// Their gateway may have any name: its ports are theirs to keep.
		out = append(out, finding("cluster", "east-west ports", OK, "the Istio is yours ("+yours+"): its gateway and ports are as you run them", reason.Cause{}))
		return out
	}
	held, err := istioinstall.PortConflicts(ctx, clients.Kube)
	switch {
	case err != nil:
		out = append(out, Finding{Scope: "cluster", Check: "east-west ports", Result: Fail, Detail: err.Error(), Fix: "check the API server"})
	case len(held) > 0:
		out = append(out, Finding{Scope: "cluster", Check: "east-west ports", Result: Fail, Detail: strings.Join(held, "; "), Fix: istioinstall.PortConflictFix})
	default:
		out = append(out, finding("cluster", "east-west ports", OK, "no other LoadBalancer holds 15021/15443/15012/15017", reason.Cause{}))
	}
	return out
}

// sidecarDigests is the sidecar build of an Istio version for arch, by
// digest of each file on the VM.
func sidecarDigests(ctx context.Context, s vmcore.Mesh, arch, version string) (map[string]string, error) {
	side, err := s.Sidecar(ctx, arch, version)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for path, local := range map[string]string{"/usr/local/bin/pilot-agent": side.PilotAgent, "/usr/local/bin/envoy": side.Envoy} {
		sum, err := fileDigest(local)
		if err != nil {
			return nil, err
		}
		out[path] = sum
	}
	return out, nil
}

func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// vmDoctor is what the checks of one VM share: the machine and, once it
// answers, its agent and what it reported.
type vmDoctor struct {
	cfg config.Config
	// store holds the VM's records and the agent CA: the state directory's,
	// or in fleet mode the cluster's.
	store         vmcore.Store
	machines      machine.Provider
	mesh          vmcore.Mesh
	name          string
	bindings      map[string]string
	bindingsKnown bool

	m  machine.Machine
	c  *agentclient.Client
	ov agentclient.Overview
	// rev is the VM's revision, istiodName the istiod name it resolves.
	rev, istiodName string
	out             []Finding
}

// add records a finding on the VM whose advice, if any, is on r (the VM's
// name its argument).
func (d *vmDoctor) add(check string, result Result, detail string, r reason.Reason) {
	c := reason.Cause{}
	if r != reason.None {
		c = reason.Because(r, d.name)
	}
	d.out = append(d.out, finding(d.name, check, result, detail, c))
}

// vmChecks runs the checks of one VM in order. The first ones need each
// other (a machine, then its address, then its agent): one that fails ends
// the list; the rest read what the agent reported and all run. machines
// are the VMs', mesh what they join.
func vmChecks(ctx context.Context, cfg config.Config, store vmcore.Store, machines machine.Provider, mesh vmcore.Mesh, name string, bindings map[string]string, bindingsKnown bool) []Finding {
	d := &vmDoctor{cfg: cfg, store: store, machines: machines, mesh: mesh, name: name, bindings: bindings, bindingsKnown: bindingsKnown}
	for _, reach := range []func(context.Context) bool{d.machine, d.address, d.agent} {
		if !reach(ctx) {
			return d.out
		}
	}
	defer d.c.Close()
	for _, check := range []func(context.Context){d.agentVersion, d.istiodDNS, d.credentials, d.iptables, d.capture, d.proxyVersion} {
		check(ctx)
	}
	return d.out
}

func (d *vmDoctor) machine(ctx context.Context) bool {
	m, err := d.machines.Info(ctx, d.name)
	if err != nil || !m.Running() {
		d.add("machine", Fail, fmt.Sprintf("not running (%v)", orDash(errString(err))), reason.VMNotRunningNow)
		return false
	}
	d.m = m
	return true
}

func (d *vmDoctor) address(ctx context.Context) bool {
	addr := d.m.Address()
	if addr == "" {
		d.add("address", Fail, "running but reports no address", reason.VMNoAddress)
		return false
	}
	prev, err := d.store.Address(d.name)
	switch {
	case err != nil:
		d.add("address", Warn, fmt.Sprintf("%s; where it was onboarded is unknown: %v", addr, err), reason.None)
	case prev != "" && prev != addr && d.cfg.FleetMode():
		d.add("address", Warn, fmt.Sprintf("changed from %s to %s since it was onboarded: the controller follows it unless its MeshVM pins spec.address", prev, addr), reason.AddressMoved)
	case prev != "" && prev != addr:
		d.add("address", Warn, fmt.Sprintf("changed from %s to %s since it was onboarded", prev, addr), reason.AddressMoved)
	default:
		d.add("address", OK, addr, reason.None)
	}
	if hosts, err := generatedHosts(d.store, d.name); err != nil || len(strings.TrimSpace(string(hosts))) == 0 {
		d.add("hosts file", Fail, "the generated hosts file is empty or missing (without it the VM cannot resolve istiod)", reason.NoHostsFile)
	}
	return true
}

// HostsRecords is a store that keeps the hosts block last generated for
// each VM (fleet mode's, in the VM's record Secret).
type HostsRecords interface {
	Hosts(vm string) ([]byte, error)
}

// generatedHosts is the hosts block last generated for VM vm, as store
// keeps it.
func generatedHosts(store vmcore.Store, vm string) ([]byte, error) {
	switch s := store.(type) {
	case vmcore.DirStore:
		return s.Dir.ReadFile(filepath.Join("vms", vm, "files", "hosts"))
	case HostsRecords:
		return s.Hosts(vm)
	}
	return nil, fmt.Errorf("%T keeps no hosts block", store)
}

func (d *vmDoctor) agent(ctx context.Context) bool {
	c, err := vmcore.DialAgent(d.m, d.store)
	if err != nil {
		d.add("agent", Fail, err.Error(), reason.AgentUnreachable)
		return false
	}
	d.rev = vmRevision(d.store, d.name, d.mesh.Revision(ctx))
	d.istiodName = workloadfiles.IstiodHost(istioinstall.Namespace, d.rev)
	d.ov = c.Overview(ctx, d.istiodName, &agentv1.ProbeRequest{Kind: agentv1.ProbeKind_PROBE_KIND_HTTP, Port: uint32(d.cfg.Workload.Probe.Port), Path: d.cfg.Workload.Probe.Path})
	if d.ov.StatusErr != nil {
		c.Close()
		d.add("agent", Fail, d.ov.StatusErr.Error(), reason.AgentUnreachable)
		return false
	}
	d.c = c
	return true
}

func (d *vmDoctor) agentVersion(context.Context) {
	if v := d.ov.Status.GetVersion(); v != buildinfo.String() {
		d.add("agent", Warn, fmt.Sprintf("vmagent %s, hostctl %s: the agent may lack what this hostctl asks for", v, buildinfo.String()), reason.AgentOutdated)
	} else {
		d.add("agent", OK, "vmagent "+v, reason.None)
	}
}

func (d *vmDoctor) istiodDNS(ctx context.Context) {
	want, err := d.mesh.IstiodAddress(ctx, d.name)
	if err != nil {
		d.add("istiod DNS", Fail, "where the VM should reach istiod is unknown: "+err.Error(), reason.IstiodAddrUnknown)
		return
	}
	switch r := d.ov.DNS; {
	case d.ov.DNSErr != nil:
		d.add("istiod DNS", Fail, "the agent did not resolve "+d.istiodName+": "+d.ov.DNSErr.Error(), reason.IstiodDNSUnchecked)
	case r.GetError() != "":
		d.add("istiod DNS", Fail, d.istiodName+" does not resolve on the VM: "+r.GetError(), reason.IstiodUnresolved)
	case len(r.GetAddresses()) == 0 || r.GetAddresses()[0] != want:
		d.add("istiod DNS", Fail, fmt.Sprintf("resolves to %s, want %s", strings.Join(r.GetAddresses(), ","), want), reason.IstiodMisresolved)
	default:
		d.add("istiod DNS", OK, d.istiodName+" -> "+want, reason.None)
	}
}

func (d *vmDoctor) credentials(context.Context) {
	d.out = append(d.out, credentialFinding(credentialFacts(d.cfg, d.name, d.ov.Status, d.bindings, d.bindingsKnown, time.Now())))
}

func (d *vmDoctor) iptables(ctx context.Context) {
	n, err := d.c.CheckNetwork(ctx)
	if err != nil {
		d.add("iptables", Warn, "the agent did not check the network: "+err.Error(), reason.AgentNoCheck)
		return
	}
	for _, b := range n.GetFirewallBackends() {
		if b.GetAvailable() {
			d.add("iptables", OK, "a backend for the capture rules is available", reason.None)
			return
		}
	}
	d.out = append(d.out, Finding{Scope: d.name, Check: "iptables", Result: Fail, Detail: "no iptables or nft backend on the VM: the sidecar cannot capture traffic",
		Fix: "install iptables on the VM (apt-get install iptables)"})
}

// capture reports the agent's verdict on the capture rules in force.
func (d *vmDoctor) capture(context.Context) {
	d.out = append(d.out, captureFinding(d.name, captureOf(d.ov.Status.GetCapture())))
}

// captureFinding grades the verdict: a failure with its fix; a verdict the
// agent could not reach, or an agent too old to give one, warns.
func captureFinding(vm string, c *Capture) Finding {
	f := Finding{Scope: vm, Check: "capture rules"}
	switch {
	case c == nil:
		f.Result, f.Detail, f.Cause = Warn, "the agent does not judge the capture rules (older than this hostctl)", reason.Because(reason.AgentOutdated, vm)
	case c.State == CaptureFail:
		f.Result, f.Detail, f.Fix, f.Cause = Fail, c.Detail, c.Fix, captureCause(c, vm)
	case c.State == CaptureSkipped:
		f.Result, f.Detail, f.Cause = Warn, c.Detail, reason.Because(reason.CaptureUnsettled, vm)
	default:
		f.Result, f.Detail = OK, c.Detail
	}
	return f
}

// proxyVersion judges the VM's proxy: the version it was given against the
// one its revision's running istiod reports (Istio's skew policy), and its
// binaries against that version's build.
func (d *vmDoctor) proxyVersion(ctx context.Context) {
	istiod, from, err := d.mesh.IstiodVersion(ctx, d.rev)
	if err != nil {
		d.add("proxy version", Fail, fmt.Sprintf("revision %s: %v", revisionName(d.rev), err), reason.IstioVersionDown)
		return
	}
	proxy := istiod
	if j, ok := joinedOf(d.store, d.name); ok && j.Istio != "" {
		proxy = j.Istio
		ok, detail := istioinstall.Skew(proxy, istiod)
		if ok {
			d.add("version skew", OK, fmt.Sprintf("revision %s: %s (istiod's from %s)", revisionName(d.rev), detail, from), reason.None)
		} else {
			d.add("version skew", Fail, fmt.Sprintf("revision %s: %s (istiod's from %s)", revisionName(d.rev), detail, from), reason.ProxySkewed)
		}
	}
	side, err := sidecarDigests(ctx, d.mesh, d.m.Arch, proxy)
	if err != nil {
		d.add("proxy version", Warn, "the Istio "+proxy+" sidecar build to compare with is not available here: "+err.Error(), reason.ProxyBuildMissing)
		return
	}
	if differ := proxySkew(side, d.ov.Status.GetFiles()); differ != "" {
		d.add("proxy version", Fail, differ+" differs from the Istio "+proxy+" build hostctl delivered", reason.ProxyBuildDiffers)
		return
	}
	d.add("proxy version", OK, "the sidecar is the Istio "+proxy+" build", reason.None)
}

// credentialFinding is the credential verdict as a doctor finding: a
// certificate being replaced after a power-off warns, a VM that cannot
// renew fails.
func credentialFinding(f credcheck.Facts) Finding {
	v := credcheck.Judge(f)
	result := OK
	switch {
	case v.Fail:
		result = Fail
	case v.State != credcheck.OK:
		result = Warn
	}
	return finding(f.VM, "credentials", result, string(v.State)+": "+v.Detail, v.Cause)
}

// proxySkew names the sidecar binaries on the VM that are not the build
// hostctl delivers.
func proxySkew(want map[string]string, files []*agentv1.FileStat) string {
	var differ []string
	for _, f := range files {
		if sum, ok := want[f.GetPath()]; ok && f.GetExists() && f.GetSha256() != sum {
			differ = append(differ, f.GetPath())
		}
	}
	return strings.Join(differ, ", ")
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
