package istioinstall

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// FindIstioctl returns the istioctl on PATH when it is of version: how an
// Istio other than the embedded one is installed. Anything else is refused,
// naming the fix: VMs never run a proxy of another version than istiod's.
func FindIstioctl(ctx context.Context, version string) (string, error) {
	p, err := exec.LookPath("istioctl")
	if err != nil {
		return "", fmt.Errorf("istio.version %s: this hostctl embeds Istio %s; another version is installed with an istioctl of that version on PATH, and there is none: "+
			"get it from https://github.com/istio/istio/releases/tag/%s, or leave istio.version empty", version, EmbeddedVersion, version)
	}
	got, err := istioctlVersion(ctx, p)
	if err != nil {
		return "", err
	}
	if got != version {
		return "", fmt.Errorf("istio.version %s: the istioctl on PATH (%s) is %s: put istioctl %s first on PATH, or set istio.version %s", version, p, got, version, got)
	}
	return p, nil
}

func istioctlVersion(ctx context.Context, path string) (string, error) {
	out, err := exec.CommandContext(ctx, path, "version", "--remote=false", "-o", "json").Output()
	if err != nil {
		return "", fmt.Errorf("%s version: %w", path, err)
	}
	var v struct {
		ClientVersion struct {
			Version string `json:"version"`
		} `json:"clientVersion"`
	}
	if err := json.Unmarshal(out, &v); err != nil || v.ClientVersion.Version == "" {
		return "", fmt.Errorf("%s version -o json: no client version in %q", path, out)
	}
	return v.ClientVersion.Version, nil
}

// istioctlRender renders an IstioOperator file with `istioctl manifest
// generate`, the charts of istioctl's own version.
func istioctlRender(istioctl, path string) ([]Object, error) {
	cmd := exec.Command(istioctl, "manifest", "generate", "-f", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s manifest generate: %w: %s", istioctl, err, stderr.String())
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	var objs []Object
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("%s manifest generate output: %w", istioctl, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		objs = append(objs, Object{Component: "istioctl", Unstructured: u})
	}
	return objs, nil
}
