// The entry points of a kernel library: included by the wrapper that emulate/compiler.py makes after
// the kernel source, with EMU_KERNEL naming the one template instantiation the library runs.
//
//   int emu_entry(emu_launch*)               unpacks launch->args by the kernel's parameter types
//                                            and runs the launch (emu_runtime.cpp)
//   void emu_signature(char* out, size_t n)  the parameter types, comma separated: numpy dtype
//                                            names, "*dtype" for pointers, "CUtensorMap", "?" for
//                                            anything else
#pragma once

#include <utility>

namespace emu {

// A CUtensorMap (emu_tensor_map.h) passed by value: "CUtensorMap" (emulate/arguments.py).
template <class T, class = void> struct is_tensor_map : std::false_type {};
template <class T> struct is_tensor_map<T, std::enable_if_t<T::emu_is_tensor_map>> : std::true_type {};

template <class T> constexpr const char* dtype_name() {
    using U = std::remove_cv_t<T>;
    if constexpr (is_tensor_map<U>::value) return "CUtensorMap";
    else if constexpr (std::is_same<U, float>::value) return "float32";
    else if constexpr (std::is_same<U, double>::value) return "float64";
    else if constexpr (std::is_same<U, __half>::value) return "float16";
    else if constexpr (std::is_same<U, __nv_bfloat16>::value) return "bfloat16";
    else if constexpr (std::is_same<U, bool>::value) return "bool";
    else if constexpr (std::is_integral<U>::value) {
        constexpr const char* names[2][4] = {{"uint8", "uint16", "uint32", "uint64"},
                                             {"int8", "int16", "int32", "int64"}};
        return names[std::is_signed<U>::value][sizeof(U) == 1 ? 0 : sizeof(U) == 2 ? 1 : sizeof(U) == 4 ? 2 : 3];
    } else return "?";
}

template <class P> void append_parameter(char* out, size_t n) {
    using D = std::decay_t<P>;
    if (out[0]) strncat(out, ",", n - strlen(out) - 1);
    if constexpr (std::is_pointer<D>::value) {
        strncat(out, "*", n - strlen(out) - 1);
        strncat(out, dtype_name<std::remove_pointer_t<D>>(), n - strlen(out) - 1);
    } else {
        strncat(out, dtype_name<D>(), n - strlen(out) - 1);
    }
}

template <class... A> void signature(void (*)(A...), char* out, size_t n) {
    out[0] = '\0';
    (append_parameter<A>(out, n), ...);
}

template <class... A, size_t... I>
int launch(void (*kernel)(A...), emu_launch* L, std::index_sequence<I...>) {
    if (L->n_args != int(sizeof...(A))) {
        snprintf(L->message, sizeof L->message, "the kernel takes %zu arguments, got %d", sizeof...(A), L->n_args);
        return EMU_ERROR;
    }
    struct Closure {
        void (*kernel)(A...);
        void** args;
        static void run_thread(void* self) {
            auto* c = static_cast<Closure*>(self);
            c->kernel(*static_cast<std::decay_t<A>*>(c->args[I])...);
        }
    } closure{kernel, L->args};
    ++launch_serial;
    return emu_run(L, &Closure::run_thread, &closure);
}

template <class... A> int launch(void (*kernel)(A...), emu_launch* L) {
    return launch(kernel, L, std::index_sequence_for<A...>{});
}

}  // namespace emu

extern "C" __attribute__((visibility("default"))) int emu_entry(emu_launch* launch) {
    return emu::launch(EMU_KERNEL, launch);
}

extern "C" __attribute__((visibility("default"))) void emu_signature(char* out, size_t n) {
    emu::signature(EMU_KERNEL, out, n);
}
