package site

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// The lab runs verify's proxyless call (fleet asks for it by this interface).
var _ fleet.GRPCCaller = (*labSite)(nil)

// echoClientPath is where the lab puts Istio's echo client on a VM.
const echoClientPath = "/usr/local/bin/echo-client"

// CallGRPC makes one gRPC call to target (xds:///...) from a lab VM with
// Istio's echo client, built from the pinned module: as istio-proxy (the
// workload key is its own), through pilot-agent's xDS and certificates.
func (s *labSite) CallGRPC(ctx context.Context, vm, target string) (string, error) {
	src, err := build.ModuleDir()
	if err != nil {
		return "", err
	}
	bins, err := build.Build(ctx, build.Options{ModuleDir: src, CacheDir: build.DefaultCacheDir(), Progress: io.Discard})
	if err != nil {
		return "", err
	}
	bin, err := os.ReadFile(bins.Path("echo-client"))
	if err != nil {
		return "", err
	}
	differ, err := machine.Differing(ctx, s.lab, vm, map[string][]byte{echoClientPath: bin})
	if err != nil {
		return "", err
	}
	if differ[echoClientPath] {
		if err := s.lab.Transfer(ctx, vm, echoClientPath, bytes.NewReader(bin), 0o755); err != nil {
			return "", err
		}
	}
	out, err := s.lab.Exec(ctx, vm, nil, "sh", "-c", fmt.Sprintf("cd / && runuser -u istio-proxy -- env GRPC_XDS_BOOTSTRAP=%s %s %s --count 1 --timeout 10s 2>&1",
		workloadfiles.GRPCBootstrapPath, echoClientPath, machine.ShellQuote(target)))
	return string(out), err
}
