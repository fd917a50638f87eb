{
  "targets": [
    {
      "target_name": "studio_engine",
      "variables": {
        "mlx_prefix": "<!(node find-mlx.js prefix)"
      },
      "sources": [
        "src/io/json.cpp",
        "src/io/mapped_file.cpp",
        "src/io/safetensors.cpp",
        "src/io/checkpoint.cpp",
        "src/io/tensor.cpp",
        "src/model/weights.cpp",
        "src/model/minimax_m2.cpp",
        "src/model/sampler.cpp",
        "src/model/kv_store.cpp",
        "src/model/block_pool.cpp",
        "src/model/shard_blocks.cpp",
        "src/backend/cpu/thread_pool.cpp",
        "src/backend/cpu/kernels.cpp",
        "src/backend/cpu/kernels_int16.cpp",
        "src/backend/cpu/kernels_int8.cpp",
        "src/backend/cpu/cpu_backend.cpp",
        "src/backend/cpu/attention.cpp",
        "src/backend/cpu/expert_mlp.cpp",
        "src/backend/cpu/workspace.cpp",
        "src/backend/cpu/bandwidth.cpp",
        "src/addon/engine_thread.cpp",
        "src/addon/js_convert.cpp",
        "src/addon/block_convert.cpp",
        "src/addon/engine_object.cpp",
        "src/addon/addon.cpp"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "src"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++1y"],
      "cflags_cc": ["-std=c++20", "-O3", "-march=native", "-ffp-contract=off", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-maybe-uninitialized"],
      "conditions": [
        ["mlx_prefix!=''", {
          "sources": ["src/backend/mlx/mlx_backend.cpp", "src/backend/mlx/mlx_kv_cache.cpp", "src/backend/mlx/mlx_kv_slab.cpp", "src/backend/mlx/mlx_sampler.cpp"],
          "defines": ["STUDIO_WITH_MLX"],
          "include_dirs": ["<!(node find-mlx.js include)"],
          "libraries": ["-L<!(node find-mlx.js lib)", "-lmlx"],
          "ldflags": ["-Wl,-rpath,<!(node find-mlx.js lib)"],
          "xcode_settings": {"OTHER_LDFLAGS": ["-Wl,-rpath,<!(node find-mlx.js lib)"]}
        }],
        ["OS=='mac'", {
          "xcode_settings": {
            "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
            "CLANG_CXX_LANGUAGE_STANDARD": "c++20",
            "MACOSX_DEPLOYMENT_TARGET": "13.0",
            "GCC_OPTIMIZATION_LEVEL": "3",
            "OTHER_CPLUSPLUSFLAGS": ["-ffp-contract=off", "-fexceptions"]
          }
        }],
        ["OS=='mac' and target_arch=='arm64'", {
          "xcode_settings": {"OTHER_CPLUSPLUSFLAGS": ["-mcpu=apple-m1"]}
        }],
        ["OS=='mac' and target_arch!='arm64'", {
          "xcode_settings": {"OTHER_CPLUSPLUSFLAGS": ["-march=native"]}
        }]
      ]
    }
  ]
}
