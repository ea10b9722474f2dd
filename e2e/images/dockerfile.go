package main

import (
	"encoding/json"
	"fmt"
	"strings"
)

func rust(crate string) string {
	return fmt.Sprintf(rustStage, crate)
}

// dockerfile renders an application image's Dockerfile from its definition.
func dockerfile(img Image) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n", img.About)
	fmt.Fprintf(&b, "#   docker build -f %s -t %s .\n", img.Dockerfile, img.Name)
	b.WriteString("# Generated from e2e/images/images.go (`imagebuild dockerfiles`), which the local\n")
	b.WriteString("# cluster's daemonless image build also follows: edit that, not this file.\n")
	for _, stage := range img.Stages {
		b.WriteString(stage)
		b.WriteString("\n\n")
	}
	fmt.Fprintf(&b, "FROM %s\n", runtimeBase)
	for _, f := range img.Files {
		switch f.From {
		case Build:
			fmt.Fprintf(&b, "COPY --from=build /src/target/release/%s %s\n", f.Src, f.Dst)
		case Assets:
			fmt.Fprintf(&b, "COPY --from=assets /assets/%s %s\n", f.Src, f.Dst)
		case Repo:
			fmt.Fprintf(&b, "COPY %s %s\n", f.Src, f.Dst)
		default:
			panic("an application image copies from the build, the assets or the repository. This is a bug.")
		}
	}
	if len(img.Env) > 0 {
		b.WriteString("ENV")
		for i, kv := range img.Env {
			sep := " \\\n    "
			if i == 0 {
				sep = " "
			}
			fmt.Fprintf(&b, "%s%s=%s", sep, kv[0], kv[1])
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "USER %s\n", img.User)
	for _, p := range img.Expose {
		fmt.Fprintf(&b, "EXPOSE %d\n", p)
	}
	fmt.Fprintf(&b, "ENTRYPOINT %s\n", jsonList(img.Entrypoint))
	if len(img.Cmd) > 0 {
		fmt.Fprintf(&b, "CMD %s\n", jsonList(img.Cmd))
	}
	return b.String()
}

func jsonList(v []string) string {
	out, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return strings.ReplaceAll(string(out), ",", ", ")
}
