# The deployment guide's C++ stack on Windows: configure the nap core with the Visual Studio 2022
# generator (x64), build Release, run the ctest suite (the law's golden vectors and invariants):
#
#   powershell -ExecutionPolicy Bypass -File cpp\build_invariants.ps1
#
# The same three steps are the "vs2022" presets (cpp/CMakePresets.json); on Linux and macOS the
# "release" presets do the same: cmake --workflow --preset release (run from cpp/).
# The core compiles the law with /fp:precise (no contraction) and MSVC's own OpenMP (/openmp,
# runtime vcomp140.dll from the Visual C++ redistributable); compile_options() reports both.
param(
    [string]$Preset = "vs2022"
)
$ErrorActionPreference = "Stop"
Set-Location -Path $PSScriptRoot

foreach ($step in @(@("cmake", "--preset", $Preset),
                    @("cmake", "--build", "--preset", $Preset),
                    @("ctest", "--preset", $Preset, "--output-on-failure"))) {
    Write-Host "== $($step -join ' ')"
    & $step[0] $step[1..($step.Length - 1)]
    if ($LASTEXITCODE -ne 0) {
        Write-Error "$($step -join ' ') failed with exit code $LASTEXITCODE"
        exit $LASTEXITCODE
    }
}
Write-Host "== build_invariants: configured, built Release, ctest passed (build\$Preset)"
